"""The run page's Activity list for a run cancelled while paused at a question: the events up to
the question and `run.cancelled` are listed, whether the page was open during the cancel or opened
after it. Reported as an empty list: the gateway's batching change (523a4a8) read `events` of
StreamRun's messages, which have none, so every run subscription failed with INTERNAL and the page
listed nothing (fixed in 6a290c1, `hub._events_of`); these tests fail on that code."""

from __future__ import annotations

import pytest
from dashboard_helpers import Mesh
from dashboard_pages import expect_status
from playwright.sync_api import Page, expect
from test_dashboard_features import _run, _wait_run

pytestmark = pytest.mark.slow

ACTIVITY = "#run-activity li"


def _paused(mesh: Mesh, message: str) -> str:
    run = _run(mesh, "approval", input={"message": message, "question": "Cancel me?"})
    _wait_run(mesh, run["name"], "RUN_STATUS_PAUSED", timeout=120)
    return str(run["name"])


def _expect_cancelled_activity(page: Page) -> None:
    expect_status(page, "RUN_STATUS_CANCELLED")
    expect(page.locator(f'{ACTIVITY}[data-type="run.cancelled"]')).to_have_count(1)
    expect(page.locator(f'{ACTIVITY}[data-type="run.interrupted"]')).to_have_count(1)
    types = page.locator(ACTIVITY).evaluate_all("(items) => items.map((li) => li.dataset.type)")
    assert types[-1] == "run.cancelled", types


def test_a_run_cancelled_while_the_page_shows_its_question_lists_its_activity(
    page: Page, mesh: Mesh
) -> None:
    name = _paused(mesh, "open during the cancel")
    page.goto(f"/#/runs/{name.split('/')[-1]}")
    expect(page.locator("#question")).to_have_text("Cancel me?")
    expect(page.locator(f'{ACTIVITY}[data-type="run.interrupted"]')).to_have_count(1)
    mesh.post(f"/v1/{name}:cancel", {"reason": "test done"})
    _expect_cancelled_activity(page)
    expect(page.locator("#question")).to_have_count(0)


def test_a_run_cancelled_while_paused_lists_its_activity_when_opened_later(
    page: Page, mesh: Mesh
) -> None:
    name = _paused(mesh, "opened after the cancel")
    mesh.post(f"/v1/{name}:cancel", {"reason": "test done"})
    _wait_run(mesh, name, "RUN_STATUS_CANCELLED", timeout=120)
    page.goto(f"/#/runs/{name.split('/')[-1]}")
    _expect_cancelled_activity(page)
