"""How a run's outcome reads, as a user sees it at 1280×800 and 390×844 (session 10's QA): a failed
run says so, with its error, above the fold and before its (empty) output; the steps card gives
the run's duration, not "1 ms from the first to the last checkpoint" for a run that took
seconds; a paused and a queued run are cancelled from the page (the node that waited for the
answer reads stopped, the queued run's node that never ran reads not run); a long thread leads
to its form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dashboard_helpers import Mesh
from dashboard_pages import expect_status, shot
from playwright.sync_api import Browser, FloatRect, Page, expect
from test_dashboard_features import DESKTOP, PHONE, _checked_page, _fits, _run, _wait_run

pytestmark = pytest.mark.slow

SIZES = {"desktop": DESKTOP, "phone": PHONE}


def _above_the_fold(page: Page, selector: str) -> FloatRect:
    """The element's box, asserting it is wholly inside the first screen."""
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not shown"
    height = SIZES["phone" if page.viewport_size == PHONE else "desktop"]["height"]
    assert box["y"] >= 0 and box["y"] + box["height"] <= height, (
        f"{selector} is at {box} on a {height} px high screen"
    )
    return box


@pytest.mark.parametrize("size", SIZES)
def test_a_failed_run_says_why_at_the_top_and_how_long_it_took(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path, tmp_path: Path
) -> None:
    # A run that never finishes its one step fails on its timeout after 3 s.
    run = _run(mesh, "hold", input={"release": str(tmp_path / "never")}, timeout="3s")
    failed = _wait_run(mesh, run["name"], "RUN_STATUS_FAILED")
    took = float(str(failed["duration"]).rstrip("s"))
    with _checked_page(browser, mesh, SIZES[size]) as page:
        page.goto(f"/#/runs/{str(run['name']).split('/')[-1]}")
        expect_status(page, "RUN_STATUS_FAILED")
        error = page.locator("#run-error")
        expect(error).to_have_text(re.compile(r"^Failed: timeout"))
        expect(error).to_have_attribute("role", "alert")
        # Once the stream has ended, the empty output box shrinks to one line saying so.
        expect(page.locator("#run-output")).to_have_class(re.compile("settled-empty"))
        expect(page.locator("#run-output .placeholder")).to_have_text(
            "No output: the run ended before writing any."
        )
        banner = _above_the_fold(page, "#run-error")
        output = page.locator("#run-output").bounding_box()
        assert output is not None and banner["y"] < output["y"]
        # The steps card gives the run's duration (the meta's), not the checkpoints' 1 ms.
        totals = page.locator("#steps-totals")
        expect(totals).to_have_text(f"1 step · the run took {took:.2f} s")
        step = page.locator("#run-steps .step[data-node=hold]")
        expect(step).to_have_attribute("data-state", "error")
        expect(step.locator(".step-time")).to_have_text(re.compile(r"^\d\.\d\d s$"))
        _fits(page, "failed run")
        shot(page, artifacts, f"40-run-failed-{size}")


def test_a_completed_run_keeps_its_output_box_and_has_no_banner(
    browser: Browser, mesh: Mesh
) -> None:
    run = _run(mesh, "echo", input={"message": "some words to keep"})
    _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    with _checked_page(browser, mesh, DESKTOP) as page:
        page.goto(f"/#/runs/{str(run['name']).split('/')[-1]}")
        expect_status(page, "RUN_STATUS_COMPLETED")
        expect(page.locator("#run-output pre")).to_contain_text("some words to keep")
        expect(page.locator("#steps-totals")).to_contain_text("1 step · the run took")
        expect(page.locator("#run-problem")).to_be_empty()
        expect(page.locator("#run-output")).not_to_have_class(re.compile("settled-empty"))


@pytest.mark.parametrize("size", SIZES)
def test_cancel_a_paused_run_from_its_page(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    run = _run(mesh, "approval", input={"message": "a draft", "question": "Cancel me?"})
    _wait_run(mesh, run["name"], "RUN_STATUS_PAUSED", timeout=120)
    with _checked_page(browser, mesh, SIZES[size]) as page:
        page.goto(f"/#/runs/{str(run['name']).split('/')[-1]}")
        expect(page.locator("#question")).to_have_text("Cancel me?")
        # "Send answer" with nothing typed does not answer "" (the choices answer in one click).
        page.click("#answer-send")
        assert page.locator("#answer").evaluate("(el) => el.validity.valueMissing")
        expect(page.locator("#question")).to_have_text("Cancel me?")
        assert mesh.get(f"/v1/{run['name']}")["run"]["status"] == "RUN_STATUS_PAUSED"
        _above_the_fold(page, "#run-cancel")
        page.click("#run-cancel")
        _above_the_fold(page, "#run-cancel-yes")
        shot(page, artifacts, f"41-run-cancel-asks-{size}")
        assert mesh.get(f"/v1/{run['name']}")["run"]["status"] == "RUN_STATUS_PAUSED"
        page.click("#run-cancel-yes")
        expect_status(page, "RUN_STATUS_CANCELLED")
        expect(page.locator("#question")).to_have_count(0)
        # The node that was waiting for the answer stopped with the run.
        expect(page.locator("#run-nodes [data-node=approve]")).to_have_attribute(
            "data-state", "stopped"
        )
        expect(page.locator("#run-error")).to_have_text("Cancelled: cancelled from the dashboard")
        _above_the_fold(page, "#run-error")
        # Cancel is gone on a phone (it pushed the rest down), disabled on a desktop.
        if size == "phone":
            expect(page.locator("#run-cancel")).to_be_hidden()
        else:
            expect(page.locator("#run-cancel")).to_be_disabled()
        shot(page, artifacts, f"41-run-cancelled-paused-{size}")
    assert _wait_run(mesh, run["name"], "RUN_STATUS_CANCELLED")["status"] == "RUN_STATUS_CANCELLED"


def test_cancel_a_queued_run_from_its_page_and_it_never_runs(
    browser: Browser, mesh: Mesh, artifacts: Path, tmp_path: Path
) -> None:
    # Both of the mesh's workers held (AGENT_WORKERS=2), so the next run waits in the queue.
    release = tmp_path / "release"
    holds = [_run(mesh, "hold", input={"release": str(release)}) for _ in range(2)]
    try:
        for hold in holds:
            _wait_run(mesh, hold["name"], "RUN_STATUS_RUNNING")
        queued = _run(mesh, "echo", input={"message": "should never be echoed"})
        with _checked_page(browser, mesh, DESKTOP) as page:
            page.goto(f"/#/runs/{str(queued['name']).split('/')[-1]}")
            expect_status(page, "RUN_STATUS_QUEUED")
            expect(page.locator("#run-output .placeholder")).to_have_text(
                "Queued: waiting for a worker to pick the run up…"
            )
            node = page.locator("#run-nodes [data-node=echo]")
            expect(node).to_have_attribute("data-state", "pending")
            page.click("#run-cancel")
            page.click("#run-cancel-yes")
            expect_status(page, "RUN_STATUS_CANCELLED")
            expect(page.locator("#run-error")).to_contain_text("Cancelled")
            # Its node never ran: it says so, not "pending" (as if it still might).
            expect(node).to_have_attribute("data-state", "notrun")
            expect(node.locator(".state")).to_have_text("not run")
            shot(page, artifacts, "42-run-cancelled-queued")
    finally:
        release.touch()
    for hold in holds:
        _wait_run(mesh, hold["name"], "RUN_STATUS_COMPLETED")
    # The workers are free again: the cancelled run stays cancelled, with no output.
    run = mesh.get(f"/v1/{queued['name']}")["run"]
    assert run["status"] == "RUN_STATUS_CANCELLED"
    assert not run.get("output")
    with _checked_page(browser, mesh, DESKTOP) as page:
        page.goto(f"/#/runs/{str(queued['name']).split('/')[-1]}")
        expect(page.locator("#run-output .placeholder")).to_have_text(
            "No output: the run ended before writing any."
        )
        # Opened after the end too (the replayed run.cancelled).
        expect(page.locator("#run-nodes [data-node=echo] .state")).to_have_text("not run")


@pytest.mark.parametrize("size", SIZES)
def test_a_long_thread_leads_to_its_latest_reply_and_form(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    first = _run(mesh, "echo", input={"message": "turn 0"})
    _wait_run(mesh, first["name"], "RUN_STATUS_COMPLETED")
    for turn in range(1, 6):
        run = _run(mesh, "echo", input={"message": f"turn {turn}"}, thread=first["thread"])
        _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    with _checked_page(browser, mesh, SIZES[size]) as page:
        page.goto(f"/#/threads/{str(first['thread']).split('/')[-1]}")
        expect(page.locator("#thread-conversation .turn.reply")).to_have_count(6)
        # Oldest first, to read it as a conversation.
        expect(page.locator("#thread-conversation .turn.reply .text").first).to_have_text("turn 0")
        expect(page.locator("#thread-conversation .turn.reply .text").last).to_have_text("turn 5")
        expect(page.locator("#thread-older")).to_be_hidden()
        page.click("#thread-jump")
        expect(page.locator("#thread-message")).to_be_focused()
        _above_the_fold(page, "#thread-send")
        _fits(page, "long thread")
        shot(page, artifacts, f"43-thread-long-{size}")


def test_a_run_out_of_time_shows_what_it_streamed_as_partial(browser: Browser, mesh: Mesh) -> None:
    # Echo one word every 0.5 s for longer than the run's 3 s: a few words, then the timeout.
    words = " ".join(f"w{i}" for i in range(20))
    run = _run(mesh, "echo", input={"message": words, "delay_ms": 500}, timeout="3s")
    failed = _wait_run(mesh, run["name"], "RUN_STATUS_FAILED")
    kept = failed["output"]["partial"]  # type: ignore[index]
    assert kept and words.startswith(kept), failed
    with _checked_page(browser, mesh, DESKTOP) as page:
        page.goto(f"/#/runs/{str(run['name']).split('/')[-1]}")
        expect_status(page, "RUN_STATUS_FAILED")
        expect(page.locator("#run-error")).to_have_text(re.compile(r"^Failed: timeout"))
        expect(page.locator("#run-partial")).to_have_text(
            f"Partial output: the {len(kept)} characters below streamed before the run "
            "stopped; they are kept on the run (output.partial)."
        )
        expect(page.locator("#run-output pre")).to_contain_text(kept.strip())
        expect(page.locator("#run-output")).not_to_have_class(re.compile("settled-empty"))
