"""A new screen opens at its top (session 13's QA): on a phone, "Start run" sits low in the runs
form, and the new run's page opened scrolled down past its title and status (scrollY 562 at
390×844), while at 1280×800 it opened at the top. And the events screen shows why a resume point
beyond the log's end gets nothing (the events service's OUT_OF_RANGE, relayed by the gateway)."""

from __future__ import annotations

import pytest
from dashboard_helpers import Mesh
from dashboard_pages import expect_status, start_run
from playwright.sync_api import Browser, expect
from test_dashboard_features import DESKTOP, PHONE, _checked_page

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_the_new_runs_page_opens_at_its_top(size: str, browser: Browser, mesh: Mesh) -> None:
    viewport = PHONE if size == "phone" else DESKTOP
    with _checked_page(browser, mesh, viewport) as page:
        page.goto("/#/runs")
        page.wait_for_selector('#run-target option[value="workflows/echo"]', state="attached")
        page.locator("#run-start").scroll_into_view_if_needed()
        if size == "phone":  # the button is below the first screen: the page was scrolled
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
