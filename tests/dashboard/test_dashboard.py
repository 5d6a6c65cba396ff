"""The dashboard in a real Chromium against a real `amelia up`: health, live events, runs that
stream, pause, resume and cancel, replay, uploads and search, a gateway restart mid-run, and
a 100,000-token output that keeps the DOM small. Each screen is saved as a screenshot."""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from dashboard_helpers import Mesh
from dashboard_pages import (
    OUTPUT_JS,
    expect_output,
    expect_status,
    output_text,
    shot,
    start_run,
    target_row,
)
from playwright.sync_api import Browser, Page, expect

pytestmark = pytest.mark.slow

ECHO_LINES = [f"line {i} of the echo" for i in range(1, 41)]


@pytest.fixture(scope="module", autouse=True)
def module_start() -> str:
    """When this module's first test began: its runs are the ones created since (the mesh is
    shared with the folder's other modules, whose runs may come before, in any order)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- status, token, keyboard ----------------------------------------------------------------


def test_status_shows_every_service_and_keeps_the_token(page: Page, artifacts: Path) -> None:
    assert "token=" not in page.url  # taken out of the address bar
    assert page.evaluate("localStorage.getItem('amelia.apiToken')") == "dash-test-token"
    for service in ("events", "agents", "rag", "nats", "postgres"):
        expect(page.locator(f"[data-service={service}] h3 [data-health=SERVING]")).to_be_visible()
    expect(page.locator("#overall")).to_have_text("Serving")
    expect(page.locator("#connection")).to_have_text("Live")
    shot(page, artifacts, "01-status")

    # Keyboard: the skip link comes first, the tabs are links that Enter follows, and the new
    # screen's heading takes the focus.
    page.locator("body").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.locator("a[data-route=runs]").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*#/runs$"))
    expect(page.locator("h1")).to_be_focused()
    assert page.locator("a[data-route=runs]").get_attribute("aria-current") == "page"


def test_wrong_token_asks_for_the_right_one(browser: Browser, mesh: Mesh, artifacts: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=mesh.url)
    try:
        page = context.new_page()
        page.goto("/?token=wrong#/status")
        dialog = page.locator("dialog#settings")
        expect(dialog).to_be_visible()
        expect(dialog.locator(".notice")).to_contain_text("API token")
        expect(page.locator("#connection")).to_have_text("Token needed")
        shot(page, artifacts, "02-token-needed")
        page.fill("#token-input", mesh.token)
        dialog.locator("button[value=save]").click()
        expect(page.locator("#connection")).to_have_text("Live")
        expect(page.locator("[data-service=agents] h3 [data-health=SERVING]")).to_be_visible()
    finally:
        context.close()


# -- runs -----------------------------------------------------------------------------------


LAYOUT_SHIFTS_JS = """
() => {
  window.__shifts = [];
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      if (!entry.hadRecentInput) window.__shifts.push(entry.value);
    }
  }).observe({ type: "layout-shift" });
}
"""


def test_run_streams_its_tokens_and_lights_its_nodes(page: Page, artifacts: Path) -> None:
    message = "\n".join(ECHO_LINES)
    start_run(page, "workflows/echo", {"message": message, "delay_ms": "25"})
    # Nothing on the page may move while the tokens stream in (Layout Instability API).
    page.evaluate(LAYOUT_SHIFTS_JS)
    # Mid-stream: some lines are there, the node is running, the run is not over.
    expect(page.locator("#run-output pre")).to_contain_text("line 8 of the echo", timeout=30_000)
    expect(page.locator("#run-nodes [data-node=echo][data-state=active]")).to_be_visible()
    assert "line 40" not in output_text(page)
    expect_status(page, "RUN_STATUS_RUNNING")
    shot(page, artifacts, "03-run-streaming")

    expect_status(page, "RUN_STATUS_COMPLETED")
    expect(page.locator("#run-nodes [data-node=echo][data-state=done]")).to_be_visible()
    expect_output(page, message)
    shifts = page.evaluate("window.__shifts")
    assert sum(shifts) < 0.01, f"layout shifted while streaming: {shifts}"
    expect(page.locator("#run-activity")).to_contain_text("run.completed")
    expect(page.locator("#run-meta")).to_contain_text("Duration")
    shot(page, artifacts, "04-run-completed")


def test_paused_run_asks_its_question_and_resumes_with_the_answer(
    page: Page, artifacts: Path
) -> None:
    start_run(
        page,
        "workflows/approval",
        {"message": "Plan: ship the dashboard", "question": "Ship the dashboard today?"},
    )
    expect(page.locator("#question")).to_have_text("Ship the dashboard today?")
    expect_status(page, "RUN_STATUS_PAUSED")
    expect(page.locator("#run-nodes [data-node=approve][data-state=waiting]")).to_be_visible()
    expect(page.locator("#run-nodes [data-node=draft][data-state=done]")).to_be_visible()
    # The first node's tokens are labelled too.
    expect(page.locator("#run-output .marker")).to_have_text(["draft"])
    shot(page, artifacts, "05-run-paused")

    page.fill("#answer", "yes, after lunch")
    page.click("#answer-send")
    expect_status(page, "RUN_STATUS_COMPLETED")
    expect(page.locator("#question")).to_have_count(0)
    expect_output(page, "Plan: ship the dashboard \nanswer was yes, after lunch")
    # The second node's tokens start a section labelled with the node.
    expect(page.locator("#run-output .marker")).to_have_text(["draft", "finish"])
    # Answering is not a retry.
    expect(page.locator("#run-meta")).not_to_contain_text("Retried")
    expect(page.locator("#run-nodes [data-node=finish][data-state=done]")).to_be_visible()
    shot(page, artifacts, "07-run-resumed")


def test_plan_workflow_shows_the_design_to_approve(page: Page, artifacts: Path) -> None:
    # The built-in plan workflow with the offline model: discovery and design echo the request,
    # then the run waits for approval of the design.
    start_run(page, "workflows/plan", {"message": "Add a dark theme", "model": "offline:echo"})
    expect(page.locator("#question")).to_contain_text("Approve this design")
    expect(page.locator(".question-detail[data-key=design] pre")).to_contain_text(
        "Add a dark theme"
    )
    expect(page.locator("#run-nodes [data-node=approval][data-state=waiting]")).to_be_visible()
    expect(page.locator("#run-nodes [data-node=design][data-state=done]")).to_be_visible()
    shot(page, artifacts, "06-plan-approval")
    page.get_by_role("group", name="Choices").get_by_role("button", name="approve").click()
    expect_status(page, "RUN_STATUS_COMPLETED")
    expect(page.locator("#run-nodes [data-node=planning][data-state=done]")).to_be_visible()
    expect(page.locator("#run-activity")).to_contain_text("workflow.progress")


def test_run_of_an_agent_made_in_the_dashboard(page: Page) -> None:
    page.goto("/#/runs")
    page.click("#agent-slot summary")
    page.fill("#agent-name", "Greeter")
    page.fill("#agent-id", "greeter")
    page.fill("#agent-model", "offline:say:Hello from the greeter agent")
    page.click("#new-agent button[type=submit]")
    page.wait_for_selector('#run-target option[value="agents/greeter"]', state="attached")
    start_run(page, "agents/greeter", {"message": "hi"})
    expect_status(page, "RUN_STATUS_COMPLETED")
    expect_output(page, "Hello from the greeter agent")
    # The agent graph is not listed; its node shows up when it starts.
    expect(page.locator("#run-nodes .node[data-state=done]")).to_have_count(1)
    expect(page.locator("#run-target")).to_have_text("agents/greeter")


def test_cancel_stops_a_running_run(page: Page, artifacts: Path) -> None:
    words = " ".join(f"w{i}" for i in range(300))
    start_run(page, "workflows/echo", {"message": words, "delay_ms": "100"})
    expect(page.locator("#run-output pre")).to_contain_text("w3 ", timeout=30_000)
    page.click("#run-cancel")
    # It asks first (one tap on a phone must not end a long run); "No" keeps the run going.
    expect(page.locator("#run-cancel-confirm")).to_contain_text("Cancel this run?")
    page.click("#run-cancel-no")
    expect(page.locator("#run-cancel-confirm")).to_be_hidden()
    expect_status(page, "RUN_STATUS_RUNNING")
    page.click("#run-cancel")
    page.click("#run-cancel-yes")
    expect_status(page, "RUN_STATUS_CANCELLED", timeout=30_000)
    expect(page.locator("#run-error")).to_contain_text("cancelled from the dashboard")
    expect(page.locator("#run-cancel")).to_be_disabled()
    assert "w299" not in output_text(page)
    shot(page, artifacts, "08-run-cancelled")


def test_browse_runs_and_replay_one(page: Page, artifacts: Path, module_start: str) -> None:
    # Only this module's runs, through the list's own filter expression (kept in the URL).
    mine = quote(f'create_time >= "{module_start}"')
    page.goto(f"/#/runs?filter={mine}")
    rows = page.locator("#runs-table tbody tr[data-run]")
    expect(rows.first).to_be_visible()
    assert rows.count() >= 3
    statuses = page.get_by_role("group", name="Statuses")
    statuses.get_by_label("Cancelled").check()
    expect(page.locator("#runs-table tbody tr[data-run]")).to_have_count(1)
    statuses.get_by_label("Cancelled").uncheck()
    expect(rows.nth(2)).to_be_visible()
    shot(page, artifacts, "09-runs")

    # The echo run (the oldest of the three): open it, the page replays it from sequence 0.
    target_row(page, "echo").last.locator("a").click()
    expect_status(page, "RUN_STATUS_COMPLETED")
    expect(page.locator("#run-replay")).to_be_enabled()
    expect(page.locator("#run-output pre")).to_have_text("\n".join(ECHO_LINES))
    page.select_option("#replay-speed", "4")
    page.click("#run-replay")
    # Replaying: the output starts over and fills again.
    expect(page.locator("#run-replay")).to_have_text("Skip to end")
    shot(page, artifacts, "10-run-replaying")
    expect(page.locator("#run-replay")).to_have_text("Replay", timeout=30_000)
    expect_output(page, "\n".join(ECHO_LINES))
    expect_status(page, "RUN_STATUS_COMPLETED")


# -- events ---------------------------------------------------------------------------------


def test_event_feed_filters_by_type_and_subject(page: Page, mesh: Mesh, artifacts: Path) -> None:
    page.goto("/#/events")
    page.fill("#ev-types", "workflow.*, run.completed")
    page.fill("#ev-subject", "runs/*")
    page.select_option("#ev-since", "now")
    page.click("#events-form button[type=submit]")
    expect(page.locator("#feed")).to_contain_text("Waiting for events")

    run = mesh.post(
        "/v1/runs", {"run": {"workflow": "workflows/echo", "input": {"message": "feed me"}}}
    )["run"]
    subject = run["name"]
    feed = page.locator("#feed .feed-row")
    expect(feed.filter(has_text="run.completed")).to_have_count(1, timeout=30_000)
    types = [
        row.get_attribute("data-type")
        for row in page.locator(f"#feed .feed-row:has-text('{subject}')").all()
    ]
    assert types == ["workflow.started", "workflow.completed", "run.completed"], types
    # A row opens to the whole event.
    feed.first.locator("summary").click()
    expect(feed.first.locator("pre")).to_contain_text('"type": "workflow.started"')
    shot(page, artifacts, "11-events")

    # From the beginning, tokens shown: the history comes back, in sequence order.
    page.fill("#ev-types", "")
    page.fill("#ev-subject", subject)
    page.uncheck("#ev-hide-tokens")
    page.select_option("#ev-since", "beginning")
    page.click("#events-form button[type=submit]")
    expect(feed.filter(has_text="run.token")).to_have_count(2)  # "feed " + "me"
    sequences = [int(s) for s in feed.evaluate_all("rows => rows.map(r => r.dataset.sequence)")]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)


# -- documents ------------------------------------------------------------------------------

ZEBRAS = """# Zebra migration

Every year the zebras of the Serengeti walk north to the Masai Mara, following the rains and
the fresh grass. The herds cross the Mara river, where crocodiles wait for them.

## Stripes

No two zebras have the same stripes; the pattern confuses biting flies.
"""

KETTLES = """# Kettles

A kettle boils water. Descale it with vinegar when limescale builds up on the element.
"""


def test_upload_by_drag_and_drop_then_find_by_search(
    page: Page, mesh: Mesh, artifacts: Path
) -> None:
    page.goto("/#/documents")
    expect(page.locator("#docs-table")).to_be_visible()
    # Drag and drop: a real drop event carrying a File, as the browser sends it.
    page.evaluate(
        """([name, text]) => {
          const zone = document.getElementById("dropzone");
          const transfer = new DataTransfer();
          transfer.items.add(new File([text], name, { type: "text/markdown" }));
          for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
          }
        }""",
        ["zebras.md", ZEBRAS],
    )
    # The file picker (keyboard users' way in).
    kettles = mesh.root / "kettles.md"
    kettles.write_text(KETTLES)
    with page.expect_file_chooser() as chooser:
        page.click("#choose-files")
    chooser.value.set_files(str(kettles))

    for name in ("zebras.md", "kettles.md"):
        upload = page.locator(f'#uploads li[data-file="{name}"]')
        expect(upload).to_have_attribute("data-state", "done", timeout=60_000)
        assert upload.locator("progress").evaluate("p => p.value") == 100
        expect(page.locator("#docs-table tbody")).to_contain_text(name)
    expect(page.locator('#uploads li[data-file="zebras.md"] .state')).to_contain_text("chunks")

    page.fill("#search-query", "where do zebras migrate every year?")
    page.click("#search-form button[type=submit]")
    first = page.locator("#search-results .passage").first
    # Embedding the question can take seconds on a busy machine.
    expect(first.locator(".source")).to_have_text("zebras.md", timeout=60_000)
    expect(first.locator("blockquote")).to_contain_text("Serengeti")
    expect(first.locator("header .where")).to_contain_text("Zebra migration")
    shot(page, artifacts, "12-documents")


def test_run_shows_the_passages_it_retrieved(page: Page, artifacts: Path) -> None:
    # The built-in chat workflow with context sources searches the documents uploaded by the
    # test above (the offline model then just echoes the question).
    start_run(
        page,
        "workflows/chat",
        {
            "message": "Which river do the zebras cross?",
            "model": "offline:echo",
            "context_sources": "documents/*",
        },
    )
    expect_status(page, "RUN_STATUS_COMPLETED")
    passage = page.locator("#run-passages .passage").first
    expect(passage.locator(".source")).to_have_text("zebras.md")
    expect(passage.locator("blockquote")).to_contain_text("Mara river")
    expect(passage.locator("header .where")).to_contain_text("Zebra migration")
    expect(page.locator("#run-nodes [data-node=retrieve][data-state=done]")).to_be_visible()
    expect(page.locator("#run-activity")).to_contain_text("retrieved")
    shot(page, artifacts, "13-run-passages")


# -- a gateway restart mid-run --------------------------------------------------------------


def test_gateway_restart_mid_run_resumes_without_gap_or_duplicate(
    page: Page, mesh: Mesh, artifacts: Path
) -> None:
    lines = [f"restart line {i:03d}" for i in range(1, 101)]
    message = "\n".join(lines)
    start_run(page, "workflows/echo", {"message": message, "delay_ms": "50"})
    expect(page.locator("#run-output pre")).to_contain_text("restart line 008", timeout=30_000)
    connects = page.evaluate("window.amelia.socket.connects")

    # A crash (the socket just drops), then a graceful stop (the gateway says 1001 going away);
    # `amelia up` starts a new gateway each time, and the page carries on by itself.
    for sig, screenshot in ((signal.SIGKILL, "14-gateway-down"), (signal.SIGTERM, "")):
        assert "restart line 100" not in output_text(page), "the run ended too soon"
        old = mesh.kill_gateway(sig)
        expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
        if screenshot:
            shot(page, artifacts, screenshot)
        mesh.wait_gateway_restarted(old)
        expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=30_000)
    assert page.evaluate("window.amelia.socket.connects") == connects + 2

    expect_status(page, "RUN_STATUS_COMPLETED")
    page.wait_for_function(f"(n) => ({OUTPUT_JS})().length >= n", arg=len(message))
    text = output_text(page)
    assert text.split("\n") == lines  # every line, once, in order
    assert text == message
    shot(page, artifacts, "15-after-gateway-restart")


# -- a very long output ---------------------------------------------------------------------


def test_hundred_thousand_tokens_keep_the_dom_small(page: Page, artifacts: Path) -> None:
    result: dict[str, Any] = page.evaluate(
        """async () => {
          const { OutputView } = await import("/js/output.js");
          const view = new OutputView({ label: "Long output" });
          const main = document.getElementById("main");
          main.replaceChildren(view.element);
          let expected = 0;
          // 100,000 tokens arriving over 100 frames, as a fast stream would deliver them.
          for (let frame = 0; frame < 100; frame += 1) {
            for (let i = 0; i < 1000; i += 1) {
              const token = (frame * 1000 + i) % 40 === 39 ? `t${frame * 1000 + i}\\n` : `t${frame * 1000 + i} `;
              expected += token.length;
              view.append(token);
            }
            await new Promise(requestAnimationFrame);
          }
          view.flush();
          const text = view.text();
          return {
            expected,
            length: text.length,
            pages: view.pages.length,
            domPages: view.pre.querySelectorAll(".page").length,
            domChars: view.pre.textContent.length,
            lastToken: text.trimEnd().split(/\\s/).pop(),
            where: view.where.textContent,
          };
        }"""
    )
    assert result["length"] == result["expected"]
    assert result["lastToken"] == "t99999"
    assert result["pages"] > 20
    assert result["domPages"] <= 3
    assert result["domChars"] <= 3 * 16_000
    assert result["where"].startswith("Pages ")
    shot(page, artifacts, "16-long-output")
    # Older output is one click away.
    page.click("text=Earlier")
    expect(page.locator("#main .output .page").first).to_be_visible()
    first_page = page.locator("#main .output .page").first.get_attribute("data-page")
    assert first_page is not None and int(first_page) < result["pages"] - 2
    expect(page.locator("text=Jump to latest")).to_be_visible()


# -- dark theme -----------------------------------------------------------------------------


def test_dark_theme_is_readable(browser: Browser, mesh: Mesh, artifacts: Path) -> None:
    context = browser.new_context(
        viewport={"width": 1280, "height": 860}, base_url=mesh.url, color_scheme="dark"
    )
    try:
        page = context.new_page()
        page.goto(f"/?token={mesh.token}#/status")
        expect(page.locator("[data-service=rag] h3 [data-health=SERVING]")).to_be_visible()
        shot(page, artifacts, "17-dark-status")
        page.goto("/#/runs")
        expect(page.locator("#runs-table tbody tr[data-run]").first).to_be_visible()
        target_row(page, "approval").first.locator("a").click()
        expect_status(page, "RUN_STATUS_COMPLETED")
        expect(page.locator("#run-nodes [data-node=finish][data-state=done]")).to_be_visible()
        shot(page, artifacts, "18-dark-run")
    finally:
        context.close()
