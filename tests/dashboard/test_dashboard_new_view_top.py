"""A new screen opens at its top (session 13's QA): on a phone, "Start run" sat low in the runs
form (session 14: the form now comes first there), and the new run's page opened scrolled down past its title and status (scrollY 562 at
390×844), while at 1280×800 it opened at the top. And the events screen shows why a resume point
beyond the log's end gets nothing (the events service's OUT_OF_RANGE, relayed by the gateway)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_helpers import Mesh
from dashboard_pages import expect_status, shot, start_run
from playwright.sync_api import Browser, expect
from test_dashboard_features import DESKTOP, PHONE, _checked_page, _run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_the_new_runs_page_opens_at_its_top(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    viewport = PHONE if size == "phone" else DESKTOP
    with _checked_page(browser, mesh, viewport) as page:
        page.goto("/#/runs")
        page.wait_for_selector('#run-target option[value="workflows/echo"]', state="attached")
        if size == "phone":
            # The start form comes first on a phone (QA session 14: it was below the 20 runs,
            # ~1500 px down), its button within the first screen and a half.
            form, table = page.locator("#start-run"), page.locator("#runs-table")
            start, runs = form.bounding_box(), table.bounding_box()
            assert start is not None and runs is not None and start["y"] < runs["y"], (start, runs)
            button = page.locator("#run-start").bounding_box()
            assert button is not None and button["y"] < 1.5 * viewport["height"], button
        shot(page, artifacts, f"57-runs-start-first-{size}")
        # Scrolled down the page, as a user reading the list: the new run's page still opens at
        # its top.
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        if size == "phone":
            assert page.evaluate("window.scrollY") > 0
        start_run(page, "workflows/echo", {"message": "top of the page"})
        expect_status(page, "RUN_STATUS_COMPLETED")
        assert page.evaluate("window.scrollY") == 0
        heading = page.locator("main h1").bounding_box()
        assert heading is not None and 0 <= heading["y"] < viewport["height"] / 2, heading
        expect(page.locator("#run-status")).to_be_in_viewport()


def test_a_resume_point_beyond_the_logs_end_says_so_on_the_events_screen(
    browser: Browser, mesh: Mesh
) -> None:
    """(The same QA: a saved sequence beyond the log's end used to wait silently.)"""
    with _checked_page(browser, mesh, PHONE) as page:
        page.goto("/#/events")
        page.select_option("#ev-since", "after")
        page.fill("#ev-after", "99999999")
        page.locator("#events-form [type=submit]").click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text(
            "The feed stopped: after_sequence 99999999 is beyond the end of the event log: its"
            " last sequence is"
        )


def test_the_runs_list_pages_on_with_a_since_filter(browser: Browser, mesh: Mesh) -> None:
    """Page tokens are bound to the request's filter (AIP-158): "Older" repeats the first
    page's filter, whose "since" time is not computed afresh (which would refuse the token)."""
    for i in range(21):  # more than a page (20), all within the last hour
        _run(mesh, "echo", input={"message": f"page {i}"})
    with _checked_page(browser, mesh, DESKTOP) as page:
        page.goto("/#/runs?since=1h")
        rows = page.locator("#runs-table tbody tr")
        expect(rows).to_have_count(20)
        older = page.get_by_role("button", name="Older")
        expect(older).to_be_enabled()
        first = rows.first.inner_text()
        older.click()
        expect(page.get_by_text("Page 2")).to_be_visible()
        expect(rows.first).not_to_have_text(first)
        expect(page.get_by_text("page_token")).to_have_count(0)
