"""The Threads list's status (LangGraph Server's: idle, busy, interrupted, error) and its filter
in the URL, as a user sees them at 1280×800 and 390×844: each thread's badge after its runs'
real outcomes, the list narrowed to one status by the menu or by a link, a thread leaving the
interrupted list once its question is answered; GET /v1/threads?status=… and its 400."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from dashboard_helpers import Mesh
from dashboard_pages import shot
from playwright.sync_api import Browser, Page, expect
from test_dashboard_features import DESKTOP, PHONE, _checked_page, _fits, _run, _wait_run

pytestmark = pytest.mark.slow

SIZES = {"desktop": DESKTOP, "phone": PHONE}


def _row(page: Page, run: dict[str, object]) -> object:
    return page.locator(f'#threads-table tr[data-thread="{run["thread"]}"]')


def _badge(page: Page, run: dict[str, object]) -> object:
    return page.locator(f'#threads-table tr[data-thread="{run["thread"]}"] .badge')


@pytest.mark.parametrize("size", SIZES)
def test_threads_show_their_status_and_filter_by_it_in_the_url(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    word = f"otter-{uuid.uuid4().hex[:6]}"
    done = _run(mesh, "chat", input={"message": f"{word} done", "model": "offline:echo"})
    failed = _run(mesh, "chat", input={"message": f"{word} failed", "model": "offline:fail:no"})
    paused = _run(mesh, "approval", input={"message": f"{word} asks", "question": "Ship it?"})
    _wait_run(mesh, done["name"], "RUN_STATUS_COMPLETED")
    _wait_run(mesh, failed["name"], "RUN_STATUS_FAILED")
    _wait_run(mesh, paused["name"], "RUN_STATUS_PAUSED")
    with _checked_page(browser, mesh, SIZES[size]) as page:
        page.goto("/#/threads")
        expect(_badge(page, done)).to_have_text("Idle")
        expect(_badge(page, failed)).to_have_text("Error")
        expect(_badge(page, paused)).to_have_text("Interrupted")
        expect(_badge(page, paused)).to_have_attribute(
            "title", f"latest run {str(paused['name'])[5:13]}: paused"
        )
        _fits(page, "threads")
        shot(page, artifacts, f"26-threads-status-{SIZES[size]['width']}")

        # The menu narrows the list and writes the filter in the URL.
        page.select_option("#threads-status", "error")
        page.wait_for_url(re.compile(r"#/threads\?status=error$"))
        expect(_row(page, failed)).to_have_count(1)
        expect(_row(page, done)).to_have_count(0)
        expect(_row(page, paused)).to_have_count(0)
        badges = page.locator("#threads-table .badge")
        assert set(badges.all_inner_texts()) == {"Error"}
        _fits(page, "threads filtered")
        shot(page, artifacts, f"26-threads-error-{SIZES[size]['width']}")

        # A link carries the filter; the paused thread leaves it once its question is answered.
        page.goto("/#/threads?status=interrupted")
        expect(page.locator("#threads-status")).to_have_value("interrupted")
        expect(_row(page, paused)).to_have_count(1)
        expect(_row(page, failed)).to_have_count(0)
        mesh.post(f"/v1/{paused['name']}:resume", {"answer": "yes"})
        _wait_run(mesh, paused["name"], "RUN_STATUS_COMPLETED")
        expect(_row(page, paused)).to_have_count(0)  # the list follows the run's end


def test_list_threads_status_over_http_and_its_400(mesh: Mesh) -> None:
    failed = _run(mesh, "chat", input={"message": "x", "model": "offline:fail:no"})
    _wait_run(mesh, failed["name"], "RUN_STATUS_FAILED")
    listed = mesh.get("/v1/threads?status=error&orderBy=update_time%20desc&pageSize=5")
    assert listed["threads"][0]["name"] == failed["thread"]
    assert listed["threads"][0]["latestRun"] == {
        "name": failed["name"],
        "status": "RUN_STATUS_FAILED",
    }
    assert {t["status"] for t in listed["threads"]} == {"THREAD_STATUS_ERROR"}
    with pytest.raises(httpx.HTTPStatusError) as refused:
        mesh.get("/v1/threads?status=asleep")
    assert refused.value.response.status_code == 400
    body = refused.value.response.json()
    assert body["code"] == 3  # INVALID_ARGUMENT, as a google.rpc.Status
    assert body["message"] == "status 'asleep' is not one of: idle, busy, interrupted, error"
