"""The thread page while a run of the thread is running (QA finding 6), at 1280×800 and 390×844:
the running turn shows its tokens as they stream (those streamed before the page opened and one
streamed while it is open), and Send on the busy thread offers the multitask strategies instead
of being disabled: enqueue queues the message behind the run, interrupt stops it and runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dashboard_helpers import Mesh
from dashboard_pages import expect_status, shot
from playwright.sync_api import Browser, expect
from test_dashboard_features import DESKTOP, PHONE, _checked_page, _fits, _run, _wait_run

pytestmark = pytest.mark.slow

# size -> (viewport, the strategy Send uses, the status the held run ends in, the new run's first status)
CASES = {
    "desktop": (DESKTOP, "enqueue", "RUN_STATUS_COMPLETED", "RUN_STATUS_QUEUED"),
    "phone": (PHONE, "interrupt", "RUN_STATUS_CANCELLED", "RUN_STATUS_RUNNING"),
}


@pytest.mark.parametrize("size", CASES)
def test_a_running_turn_streams_and_send_offers_the_strategies(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path, tmp_path: Path
) -> None:
    viewport, strategy, held_end, new_status = CASES[size]
    release, more = tmp_path / "release", tmp_path / "more"
    words = "streamed before the page opened"
    run = _run(mesh, "hold", input={"message": words, "release": str(release), "more": str(more)})
    thread_id = str(run["thread"]).split("/")[-1]
    try:
        _wait_run(mesh, run["name"], "RUN_STATUS_RUNNING")
        with _checked_page(browser, mesh, viewport) as page:
            page.goto(f"/#/threads/{thread_id}")
            reply = page.locator("#thread-conversation .turn.reply")
            expect(reply).to_have_count(1)
            live = reply.locator(".live-reply pre.output")
            # The tokens so far, not "…": the turn reads what the run has written.
            expect(live).to_contain_text(words)
            # A token streamed while the page is open joins them, without a reload.
            more.write_text("and one more while you watch")
            expect(live).to_contain_text(f"{words} and one more while you watch")
            reply.scroll_into_view_if_needed()
            shot(page, artifacts, f"27-thread-live-turn-{size}")
            # Send is enabled; the busy thread asks what to do with the run.
            send = page.locator("#thread-send")
            expect(send).to_be_enabled()
            busy = page.locator("#thread-busy")
            expect(busy).to_be_visible()
            expect(busy).to_contain_text(
                f"Run {str(run['name']).split('/')[-1][:8]} of this thread is running. Send:"
            )
            choices = page.locator("#thread-multitask option")
            expect(choices).to_have_text(
                [
                    "Queue it after the thread's runs",
                    "Stop the thread's run, keep its state",
                    "Stop the thread's run and delete it",
                ]
            )
            page.select_option("#thread-multitask", strategy)
            page.fill("#thread-message", "a second message while it runs")
            page.locator("#thread-continue").scroll_into_view_if_needed()
            _fits(page, "busy thread")
            shot(page, artifacts, f"27-thread-live-{size}")
            send.click()
            page.wait_for_url(re.compile(r"#/runs/[0-9a-f-]+$"))
            new_name = f"runs/{page.url.rsplit('/', 1)[-1]}"
            assert new_name != run["name"]
            expect_status(page, new_status)
            release.write_text("go")
            _wait_run(mesh, run["name"], held_end)
            _wait_run(mesh, new_name, "RUN_STATUS_COMPLETED")
            # Both turns, in order; once ended no turn streams.
            page.goto(f"/#/threads/{thread_id}")
            turns = page.locator("#thread-conversation .turn")
            expect(turns).to_have_count(4)
            expect(turns.nth(2)).to_contain_text("a second message while it runs")
            expect(page.locator("#thread-busy")).to_be_hidden()
            expect(page.locator(".live-reply")).to_have_count(0)
    finally:
        release.write_text("go")
