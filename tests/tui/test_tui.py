"""`amelia tui` driven headless (Textual's pilot) against a real mesh behind a real gateway:
what a person at a keyboard would do, and what they would see."""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import uuid
from typing import Any

from rich.console import Console
from textual.widgets import DataTable, Input, Static
from tui_helpers import TuiMesh, on_screen, paste, running_tui, type_text, wait_until

from amelia_cli.tui.app import HelpScreen
from amelia_cli.tui.common import ConfirmScreen
from amelia_cli.tui.documents import DocumentsScreen
from amelia_cli.tui.events_view import EventsScreen
from amelia_cli.tui.run_view import RunScreen
from amelia_cli.tui.runs import RunsScreen
from amelia_cli.tui.start import StartRunScreen

ECHO_LINES = [f"line {i} of the echo" for i in range(1, 41)]


def text_of(screen: Any, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def start_run(pilot: Any, target: str, message: str, **fields: str) -> RunScreen:
    """`n`, the target typed, the message pasted, other fields typed, Ctrl+S: the run opens."""
    await pilot.press("n")
    await wait_until(lambda: isinstance(pilot.app.screen, StartRunScreen), "the form is open")
    form = on_screen(pilot, StartRunScreen)
    await wait_until(lambda: form.workflows, "the form knows the workflows")
    await type_text(pilot, target)
    names = ["message", *fields]
    await wait_until(
        lambda: all(form.query(f"#in-{name}") for name in names), "the input fields are there"
    )
    await pilot.press("tab")
    await paste(pilot, message)
    for name, value in fields.items():
        form.query_one(f"#in-{name}", Input).focus()
        await type_text(pilot, value)
    await pilot.press("ctrl+s")
    await wait_until(
        lambda: isinstance(pilot.app.screen, RunScreen) and pilot.app.screen.query("#run-output"),
        "the run is open",
        seen=lambda: (pilot.app.screen, text_of(form, "#start-error"), form.run_spec()),
    )
    screen: RunScreen = on_screen(pilot, RunScreen)
    return screen


async def test_start_a_run_and_see_its_tokens_stream(tui_mesh: TuiMesh) -> None:
    message = "\n".join(ECHO_LINES)
    async with running_tui(tui_mesh.url) as pilot:
        run = await start_run(pilot, "echo", message, delay_ms="25")
        # Mid-stream: some lines are there, the node is running, the run is not over.
        await wait_until(lambda: "line 8 of" in run.output.text, "tokens arrive")
        assert run.nodes["echo"][0] == "active" and "line 40" not in run.output.text
        assert run.status == "running"
        await wait_until(lambda: run.status == "completed", "the run completes")
        await wait_until(lambda: run.output.text == message, "every token, once")
        assert run.nodes["echo"][0] == "done" and run.nodes["echo"][1].endswith(" s")
        await wait_until(lambda: "took" in text_of(run, "#run-head"), "the head has the timing")

        # Back to the list: the run is there, completed.
        await pilot.press("escape")
        runs = on_screen(pilot, RunsScreen)
        await wait_until(lambda: run.run_name in runs.runs, "the list has the run")
        await wait_until(lambda: runs.runs[run.run_name]["status"] == "RUN_STATUS_COMPLETED")


async def test_answer_a_paused_plan_by_key_and_by_typing(tui_mesh: TuiMesh) -> None:
    async with running_tui(tui_mesh.url) as pilot:
        run = await start_run(pilot, "plan", "Add a dark theme", model="offline:echo")
        await wait_until(lambda: run.status == "paused", "the plan waits for approval")
        assert "Approve this design" in text_of(run, "#question-text")
        assert "Add a dark theme" in text_of(run, "#question-details")
        assert run.nodes["approval"][0] == "waiting" and run.nodes["design"][0] == "done"
        assert run.query_one("#question").display
        await pilot.press("a")  # approve
        await wait_until(lambda: run.status == "completed", "the approved plan completes")
        await wait_until(lambda: (run.run.get("output") or {}).get("status") == "approved")
        assert run.nodes["planning"][0] == "done"
        assert not run.query_one("#question").display
        assert "── planning ──" in [line for line, _ in run.output._lines]

        await pilot.press("escape")
        run = await start_run(pilot, "plan", "Rewrite it in Rust", model="offline:echo")
        await wait_until(lambda: run.status == "paused", "the second plan waits")
        # `r`: the question asks for a reason, so the TUI asks for it before rejecting.
        answer = run.query_one("#answer", Input)
        await pilot.press("r")
        await wait_until(lambda: run.focused is answer, "the reason is asked for")
        assert answer.value == "reject: " and "why?" in text_of(run, "#question-keys")
        await pilot.press("escape")  # not now: nothing sent, the question still asked
        await wait_until(lambda: run.focused is not answer, "the reason box left")
        assert answer.value == "" and "why?" not in text_of(run, "#question-keys")
        assert run.status == "paused" and run.query_one("#question").display
        await pilot.press("r")
        await wait_until(lambda: run.focused is answer, "the reason is asked for again")
        # No reason given: the rejection alone is sent, as the dashboard and `amelia run` send
        # it (the reason is optional; QA s26: the TUI refused it).
        await pilot.press("enter")
        await wait_until(lambda: run.status == "completed", "rejected without a reason")
        await wait_until(lambda: (run.run.get("output") or {}).get("status") == "rejected")
        assert run.run["output"].get("reason", "") == ""
        # Said as the dashboard says it (QA s26: the head read "completed").
        await wait_until(lambda: "rejected" in text_of(run, "#run-head"), "the head: rejected")
        assert "completed" not in text_of(run, "#run-head")

        await pilot.press("escape")
        run = await start_run(pilot, "plan", "Rewrite it in COBOL", model="offline:echo")
        await wait_until(lambda: run.status == "paused", "the third plan waits")
        answer = run.query_one("#answer", Input)
        await pilot.press("r")
        await wait_until(lambda: run.focused is answer, "the reason is asked for")
        await type_text(pilot, "too risky")
        await pilot.press("enter")
        await wait_until(lambda: run.status == "completed", "the rejected plan completes")
        await wait_until(lambda: (run.run.get("output") or {}).get("status") == "rejected")
        assert run.run["output"]["reason"] == "too risky"
        # Never reached: said in words, as the dashboard's chip (not `· planning`).
        await wait_until(lambda: run.nodes["planning"][0] == "skipped", "planning skipped")
        assert "planning skipped" in text_of(run, "#run-nodes")
        # One answer is no retry: the head says nothing of retries (it said "attempt 2").
        assert "retried" not in text_of(run, "#run-head")
        assert "attempt" not in text_of(run, "#run-head")


async def test_cancel_a_running_run(tui_mesh: TuiMesh) -> None:
    words = " ".join(f"w{i}" for i in range(300))
    async with running_tui(tui_mesh.url) as pilot:
        run = await start_run(pilot, "echo", words, delay_ms="100")
        await wait_until(lambda: "w3 " in run.output.text, "tokens arrive")
        await pilot.press("c")
        await wait_until(lambda: isinstance(pilot.app.screen, ConfirmScreen), "asked to confirm")
        await pilot.press("y")
        await wait_until(lambda: run.status == "cancelled", "the run is cancelled")
        await wait_until(lambda: "cancelled from the terminal UI" in text_of(run, "#run-error"))
        assert "w299" not in run.output.text
        assert run.nodes["echo"][0] == "stopped"
        # Nothing left to cancel: the key is gone from the footer.
        assert run.check_action("cancel", ()) is False


async def test_event_pane_filters_by_type_and_subject(tui_mesh: TuiMesh) -> None:
    async with running_tui(tui_mesh.url) as pilot:
        await pilot.press("2")
        events = on_screen(pilot, EventsScreen)
        await pilot.press("slash")
        await type_text(pilot, "workflow.*, run.completed")
        await pilot.press("tab")
        await type_text(pilot, "runs/*")
        await pilot.press("enter")
        await wait_until(lambda: "waiting" in text_of(events, "#ev-counts"), "subscribed")

        run = (
            await tui_mesh.post(
                "/v1/runs", {"run": {"workflow": "workflows/echo", "input": {"message": "a b"}}}
            )
        )["run"]
        name = run["name"]

        def types_of(subject: str) -> list[str]:
            return [e["type"] for e in events.shown.values() if e["subject"] == subject]

        await wait_until(lambda: "run.completed" in types_of(name), "the run's end is listed")
        assert types_of(name) == ["workflow.started", "workflow.completed", "run.completed"]

        # That run only, from the beginning, tokens shown: its history, in sequence order.
        events.set_filter(subject=name, since="beginning")
        await pilot.press("t")
        await wait_until(lambda: "run.completed" in types_of(name), "the history replays")
        assert types_of(name).count("run.token") == 2  # "a " and "b"
        sequences = [int(key) for key in events.shown]
        assert sequences == sorted(set(sequences))

        # Enter on a row shows the whole event.
        await pilot.press("enter")
        await wait_until(lambda: pilot.app.screen.__class__.__name__ == "EventDetailScreen")
        await pilot.press("escape")

        # A pattern the log refuses is said so, in the gateway's words.
        events.set_filter(types="run.**")
        await wait_until(lambda: "stopped" in text_of(events, "#ev-counts"), "the refusal shows")
        assert "run.**" in text_of(events, "#ev-counts")


async def test_runs_list_updates_live_and_filters(tui_mesh: TuiMesh) -> None:
    async with running_tui(tui_mesh.url) as pilot:
        runs = on_screen(pilot, RunsScreen)
        marker = uuid.uuid4().hex
        run = (
            await tui_mesh.post(
                "/v1/runs",
                {"run": {"workflow": "workflows/echo", "input": {"message": marker}}},
            )
        )["run"]
        # Nobody presses anything: the lifecycle events bring the run in.
        await wait_until(lambda: run["name"] in runs.runs, "the new run appears by itself")
        await wait_until(lambda: runs.runs[run["name"]]["status"] == "RUN_STATUS_COMPLETED")

        await pilot.press("slash")
        await type_text(pilot, "plan")
        await pilot.press("enter")
        await wait_until(lambda: run["name"] not in runs.runs, "only plan runs")
        assert all(r.get("workflow") == "workflows/plan" for r in runs.runs.values())

        await pilot.press("slash", "ctrl+u", "enter")
        await wait_until(lambda: run["name"] in runs.runs, "every run again")
        # Slow for sure (5 s a word): still running when it is cancelled, however busy the
        # machine (CI: a run of one long word had already COMPLETED, and the cancel was a 400).
        slow_input = {"message": f"{marker} " * 5, "delay_ms": 5000}
        slow = (
            await tui_mesh.post(
                "/v1/runs", {"run": {"workflow": "workflows/echo", "input": slow_input}}
            )
        )["run"]
        await tui_mesh.post(f"/v1/runs/{slow['name'].split('/')[1]}:cancel", {"reason": "test"})
        for _ in range(6):  # any → queued → running → paused → completed → failed → cancelled
            await pilot.press("s")
        await wait_until(
            lambda: (
                slow["name"] in runs.runs
                and all(r["status"] == "RUN_STATUS_CANCELLED" for r in runs.runs.values())
            ),
            "only cancelled runs",
        )
        # Enter opens the run under the cursor.
        table = runs.query_one("#runs-table", DataTable)
        table.focus()
        await pilot.press("enter")
        opened = on_screen(pilot, RunScreen)
        assert opened.run_name in runs.runs


ZEBRAS = """# Zebra migration

Every year the zebras of the Serengeti walk north to the Masai Mara, following the rains and
the fresh grass. The herds cross the Mara river, where crocodiles wait for them.

## Stripes

No two zebras have the same stripes; the pattern confuses biting flies.
"""


async def ingest(mesh: TuiMesh, title: str, text: str) -> str:
    reply = await mesh.post(
        "/v1/documents",
        {"source": {"title": title}, "content": base64.b64encode(text.encode()).decode()},
    )
    name: str = reply["document"]["name"]
    return name


async def test_search_documents_and_see_retrieved_passages(tui_mesh: TuiMesh) -> None:
    async with running_tui(tui_mesh.url) as pilot:
        await pilot.press("3")
        docs = on_screen(pilot, DocumentsScreen)
        name = await ingest(tui_mesh, f"zebras-{uuid.uuid4().hex[:6]}.md", ZEBRAS)
        table = docs.query_one("#doc-table", DataTable)
        # The list reloads itself on document.* events.
        await wait_until(lambda: name in [str(k.value) for k in table.rows], "the new document")

        await pilot.press("slash")
        await type_text(pilot, "which river do the zebras cross")

        async def found() -> bool:
            await pilot.press("enter")
            await wait_until(lambda: "searching" not in text_of(docs, "#doc-note"))
            return any(hit.get("document") == name for hit in docs.hits)

        # Indexing happens in the background: search until the document is found.
        for _ in range(60):
            if await found():
                break
            await asyncio.sleep(0.5)
            docs.query_one("#doc-query", Input).focus()
        hit = next(hit for hit in docs.hits if hit.get("document") == name)
        assert "Mara river" in hit["content"]
        assert "Zebra migration" in hit.get("headingPath", [])
        assert "Mara river" in text_of(docs, "#doc-results .passage")

        # A chat run with context sources shows the passages it retrieved.
        await pilot.press("1")
        run = await start_run(
            pilot,
            "chat",
            "Which river do the zebras cross?",
            model="offline:echo",
            context_sources=name,
        )
        await wait_until(lambda: run.ended and run.run.get("endTime"), "the chat run ends")
        assert run.status == "completed", run.run.get("error")
        assert any("Mara river" in p.get("content", "") for p in run.passages)
        assert run.nodes["retrieve"][0] == "done"
        await pilot.press("p")
        assert "Passages (" in str(run.query_one("#run-tabbar").render())


async def test_gateway_restart_mid_run_shows_each_line_once(tui_mesh: TuiMesh) -> None:
    lines = [f"restart line {i:03d}" for i in range(1, 101)]
    message = "\n".join(lines)
    async with running_tui(tui_mesh.url) as pilot:
        app: Any = pilot.app
        run = await start_run(pilot, "echo", message, delay_ms="50")
        await wait_until(lambda: "restart line 008" in run.output.text, "tokens arrive")
        connects = app.socket.connects
        # A crash (the socket just drops), then a graceful stop (1001 going away); each time a
        # new gateway starts on the same port and the TUI carries on by itself.
        for sig in (signal.SIGKILL, signal.SIGTERM):
            assert "restart line 100" not in run.output.text, "the run ended too soon"
            await tui_mesh.gateway.kill(sig)
            await wait_until(lambda: app.connection == "reconnecting", "the TUI sees it go")
            await tui_mesh.gateway.start()
            await wait_until(lambda: app.connection == "open", "the TUI is back")
        assert app.socket.connects == connects + 2

        def seen() -> str:
            text = run.output.text
            return f"{run.status}, {run.events_seen} events, {len(text)} chars: ...{text[-60:]!r}"

        await wait_until(lambda: run.status == "completed", "the run completes", seen=seen)
        await wait_until(lambda: len(run.output.text) >= len(message), "every token", seen=seen)
        assert run.output.text.split("\n") == lines  # every line, once, in order
        assert run.output.text == message


async def test_wrong_token_is_said_and_not_retried(tui_mesh: TuiMesh) -> None:
    from amelia_cli.tui.app import AmeliaApp

    app = AmeliaApp(tui_mesh.url, "not-the-token")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(lambda: app.connection == "unauthorized", "the refusal is seen")
        runs = on_screen(pilot, RunsScreen)
        await wait_until(lambda: "token" in text_of(runs, "#runs-note"), "the list says why")
        connects = app.socket.connects
        await pilot.pause(1.5)  # a reconnect would come within 0.25 s
        assert app.socket.connects == connects and app.connection == "unauthorized"


async def test_help_lists_the_keys(tui_mesh: TuiMesh) -> None:
    async with running_tui(tui_mesh.url) as pilot:
        await pilot.press("question_mark")
        help_screen = on_screen(pilot, HelpScreen)
        console = Console(width=80, file=io.StringIO())  # the help as it reads at 80 columns
        for box in help_screen.query(Static):
            console.print(box.content)
        text = console.file.getvalue()
        for words in ("Approve", "Reject", "Cancel", "New run", "Tokens", "Search"):
            assert words in text
        await pilot.press("escape")
        on_screen(pilot, RunsScreen)
