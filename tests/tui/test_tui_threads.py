"""The TUI's Threads screens (LangGraph Studio's thread view) driven headless by keys, against the
real mesh behind a real gateway: the list, a thread's state, its question answered, a refused
edit, a branch from a picked checkpoint."""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Any

from rich.console import Console
from rich.text import Text
from textual.widgets import DataTable, Input, Static, TextArea
from tui_helpers import DEADLINE, TuiMesh, on_screen, running_tui, type_text, wait_until

from amelia_cli.tui.run_view import RunScreen
from amelia_cli.tui.start import StartRunScreen
from amelia_cli.tui.thread_edit import StateEditScreen
from amelia_cli.tui.thread_view import FORK_MARK, ThreadScreen
from amelia_cli.tui.threads import ThreadsScreen

ENDED = {"RUN_STATUS_COMPLETED", "RUN_STATUS_FAILED", "RUN_STATUS_CANCELLED"}


def text_of(screen: Any, selector: str) -> str:
    """The box's words: a Text as it is, a group of them (the State tab's values) printed."""
    content = screen.query_one(selector, Static).content
    if isinstance(content, str | Text):
        return str(content)
    out = Console(file=io.StringIO(), width=1000, color_system=None)
    out.print(content)
    return out.file.getvalue()  # type: ignore[attr-defined,no-any-return]


async def start(mesh: TuiMesh, workflow: str, message: str, thread: str = "") -> dict[str, Any]:
    run: dict[str, Any] = {
        "workflow": f"workflows/{workflow}",
        "input": {"message": message, "model": "offline:echo"},
    }
    if thread:
        run["thread"] = thread
    return dict((await mesh.post("/v1/runs", {"run": run}))["run"])


async def reaches(mesh: TuiMesh, name: str, statuses: set[str]) -> dict[str, Any]:
    """The run once its status is one of `statuses` (read over HTTP, as any client would)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        run = dict((await mesh.get(f"/v1/runs/{name.rsplit('/', 1)[-1]}"))["run"])
        if run.get("status") in statuses:
            return run
        assert loop.time() < deadline, f"{name} stayed {run.get('status')}"
        await asyncio.sleep(0.1)


async def cancelled_at_its_question(mesh: TuiMesh, message: str) -> dict[str, Any]:
    """A `plan` run cancelled while it waited for approval: its thread's graph has approval
    next, and nothing runs on it."""
    run = await start(mesh, "plan", message)
    await reaches(mesh, run["name"], {"RUN_STATUS_PAUSED"})
    await mesh.post(f"/v1/runs/{run['name'].rsplit('/', 1)[-1]}:cancel", {"reason": "later"})
    return await reaches(mesh, run["name"], {"RUN_STATUS_CANCELLED"})


async def open_thread(pilot: Any, thread: str) -> ThreadScreen:
    """`4`, the cursor on the thread (it is listed by itself), Enter."""
    await pilot.press("4")
    threads = on_screen(pilot, ThreadsScreen)
    await wait_until(lambda: thread in threads.threads, "the thread is listed")
    table = threads.query_one("#threads-table", DataTable)
    table.focus()
    table.move_cursor(row=table.get_row_index(thread), animate=False)
    await pilot.press("enter")
    await wait_until(lambda: isinstance(pilot.app.screen, ThreadScreen), "the thread opens")
    screen: ThreadScreen = on_screen(pilot, ThreadScreen)
    await wait_until(lambda: screen.loaded, "the thread is loaded")
    return screen


async def approve(pilot: Any, screen: ThreadScreen) -> None:
    """`a`, "approve", Enter: the thread's latest run completes. Nobody reloads: the run's
    events bring its end in."""
    await pilot.press("a")
    await type_text(pilot, "approve")
    await pilot.press("enter")
    await wait_until(
        lambda: screen.latest_run.get("status") == "RUN_STATUS_COMPLETED",
        "the answered run completes",
        seen=lambda: screen.latest_run.get("status"),
    )


async def test_list_open_and_answer_the_question(tui_mesh: TuiMesh) -> None:
    run = await start(tui_mesh, "plan", "Add a dark theme")
    await reaches(tui_mesh, run["name"], {"RUN_STATUS_PAUSED"})
    thread = run["thread"]
    async with running_tui(tui_mesh.url) as pilot:
        await pilot.press("4")
        threads = on_screen(pilot, ThreadsScreen)
        await wait_until(lambda: thread in threads.threads, "the thread is listed")
        # Newest first, interrupted (its run waits for an answer), from ListThreads alone.
        assert next(iter(threads.threads)) == thread
        table = threads.query_one("#threads-table", DataTable)
        assert str(table.get_cell(thread, "status")) == "interrupted"
        assert threads.threads[thread]["latestRun"]["name"] == run["name"]
        screen = await open_thread(pilot, thread)

        state = text_of(screen, "#thread-state-text")
        assert "approval" in state.split("next", 1)[1].splitlines()[0]
        assert "design" in state and "Add a dark theme" in state
        assert screen.query_one("#thread-question").display
        assert "Approve this design" in text_of(screen, "#thread-question-text")
        assert screen.check_action("answer", ()) and not screen.check_action("continue", ())

        await approve(pilot, screen)
        await wait_until(
            lambda: "nothing: the graph ended" in text_of(screen, "#thread-state-text")
        )
        assert not screen.query_one("#thread-question").display
        assert "plan" in screen.state.get("values", {})

        # A new run on the thread: the form holds the thread and the last run's model, the
        # message is typed; the run opens over the thread, Esc goes back to it.
        await pilot.press("r")
        form = on_screen(pilot, StartRunScreen)
        await wait_until(lambda: form.query("#in-message"), "the form's boxes")
        await wait_until(lambda: form.focused is form.query_one("#in-message"), "message focused")
        assert form.query_one("#start-thread", Input).value == thread
        assert form.query_one("#in-model", Input).value == "offline:echo"
        await type_text(pilot, "Add a light theme")
        await pilot.press("ctrl+s")
        await wait_until(lambda: isinstance(pilot.app.screen, RunScreen), "the run opens")
        await pilot.press("escape")
        assert pilot.app.screen is screen
        await wait_until(lambda: len(screen.runs) == 2, "the thread has the new run")

        # A thread that is not there is said so on the screen.
        await pilot.press("escape")
        pilot.app.open_thread(f"threads/{uuid.uuid4()}")  # type: ignore[attr-defined]
        missing = on_screen(pilot, ThreadScreen)
        await wait_until(lambda: missing.query("#thread-error"), "the screen is composed")
        await wait_until(lambda: "not found" in text_of(missing, "#thread-error"), "said")
        assert missing.query_one("#thread-error").display


async def test_refused_edit_then_a_branch_from_a_picked_checkpoint(tui_mesh: TuiMesh) -> None:
    first = await start(tui_mesh, "chat", "first message")
    await reaches(tui_mesh, first["name"], ENDED)
    thread = first["thread"]
    second = await start(tui_mesh, "chat", "second message", thread)
    assert (await reaches(tui_mesh, second["name"], ENDED))["status"] == "RUN_STATUS_COMPLETED"
    async with running_tui(tui_mesh.url) as pilot:
        screen = await open_thread(pilot, thread)
        await pilot.press("m")
        conversation = text_of(screen, "#thread-messages-text")
        assert conversation.index("first message") < conversation.index("second message")
        assert "user" in conversation and "assistant" in conversation

        # A key the state does not have: the API's refusal is shown in the editor.
        await pilot.press("e")
        editor = on_screen(pilot, StateEditScreen)
        editor.query_one("#edit-values", TextArea).load_text('{"nope": 1}')
        await pilot.press("ctrl+s")
        await wait_until(lambda: "refused" in text_of(editor, "#edit-error"), "the refusal")
        refusal = text_of(editor, "#edit-error")
        assert "INVALID_ARGUMENT" in refusal and "nope" in refusal
        editor.query_one("#edit-values", TextArea).load_text("{not json")
        await pilot.press("ctrl+s")
        assert "not valid JSON" in text_of(editor, "#edit-error")
        await pilot.press("escape")
        await wait_until(lambda: pilot.app.screen is screen, "back on the thread")

        # The first run's last checkpoint, picked from the history, then a branch from it.
        await pilot.press("h")
        picked = next(
            s for s in screen.history if s.get("run") == first["name"] and not s.get("next")
        )
        table = screen.query_one("#thread-history", DataTable)
        table.move_cursor(row=table.get_row_index(picked["checkpoint"]), animate=False)
        await pilot.press("enter")
        assert screen.picked == picked["checkpoint"]
        assert "picked from the history" in text_of(screen, "#thread-state-text")
        assert "second message" not in text_of(screen, "#thread-messages-text")
        await pilot.press("b")
        editor = on_screen(pilot, StateEditScreen)
        assert f"Branch from step {picked['step']}" in str(editor.query_one("Label").render())
        editor.query_one("#edit-values", TextArea).load_text(
            '{"messages": [{"role": "user", "content": "a branch"}]}'
        )
        await pilot.press("ctrl+s")
        await wait_until(lambda: pilot.app.screen is screen, "saved")
        await wait_until(
            lambda: screen.state.get("parentCheckpoint") == picked["checkpoint"],
            "the new checkpoint continues from the picked one",
        )
        await wait_until(lambda: screen.history[0]["checkpoint"] == screen.state["checkpoint"])
        newest = screen.history[0]
        row = table.get_row(newest["checkpoint"])
        assert str(row[0]) == FORK_MARK and str(row[2]) == "edit"
        conversation = text_of(screen, "#thread-messages-text")
        assert "a branch" in conversation and "second message" not in conversation
        # The later checkpoints stay in the history.
        assert any(s.get("run") == second["name"] for s in screen.history)


async def test_continue_a_cancelled_question_then_answer_it(tui_mesh: TuiMesh) -> None:
    run = await cancelled_at_its_question(tui_mesh, "Split the settings page")
    async with running_tui(tui_mesh.url) as pilot:
        screen = await open_thread(pilot, run["thread"])
        # Cancelled at its question: the state still has approval next, nothing runs.
        assert screen.state.get("next") == ["approval"]
        assert screen.check_action("continue", ()) and not screen.check_action("answer", ())
        await pilot.press("c")
        await wait_until(lambda: isinstance(pilot.app.screen, RunScreen), "the new run opens")
        continued = on_screen(pilot, RunScreen)
        assert continued.run_name != run["name"]
        await wait_until(lambda: continued.status == "paused", "asked again")
        await pilot.press("escape")
        await wait_until(lambda: screen.query_one("#thread-question").display, "the question")
        assert screen.latest_run.get("name") == continued.run_name
        # `c` is gone while the run waits; had it been pressed in that instant, the API's
        # refusal (the thread is busy) is said on the screen.
        assert not screen.check_action("continue", ())
        screen.action_continue()
        await wait_until(lambda: "not continued" in text_of(screen, "#thread-error"), "said")
        assert continued.run_name in text_of(screen, "#thread-error")
        await approve(pilot, screen)
        assert not screen.query_one("#thread-error").display
        assert not screen.state.get("next") and "plan" in screen.state.get("values", {})


async def test_s_shows_the_threads_of_one_status_at_a_time(tui_mesh: TuiMesh) -> None:
    asked = await start(tui_mesh, "plan", "Add a status filter")
    await reaches(tui_mesh, asked["name"], {"RUN_STATUS_PAUSED"})
    done = await start(tui_mesh, "chat", "a finished thread")
    await reaches(tui_mesh, done["name"], {"RUN_STATUS_COMPLETED"})
    async with running_tui(tui_mesh.url) as pilot:
        await pilot.press("4")
        threads = on_screen(pilot, ThreadsScreen)
        await wait_until(lambda: asked["thread"] in threads.threads, "all threads are listed")
        assert done["thread"] in threads.threads
        table = threads.query_one("#threads-table", DataTable)
        table.focus()

        async def step(status: str) -> None:
            """`s`: the next status, its list once loaded (its note says which status)."""
            await pilot.press("s")
            await wait_until(
                lambda: text_of(threads, "#threads-note").startswith(f"Status: {status}"),
                f"the {status} threads are shown",
                seen=lambda: text_of(threads, "#threads-note"),
            )

        await step("idle")
        assert done["thread"] in threads.threads and asked["thread"] not in threads.threads
        await step("busy")
        await step("interrupted")
        assert asked["thread"] in threads.threads and done["thread"] not in threads.threads
        shown = {str(table.get_cell(name, "status")) for name in threads.threads}
        assert shown == {"interrupted"}
        await step("error")
        assert asked["thread"] not in threads.threads and done["thread"] not in threads.threads
        # Then every thread again, the note without a status.
        await pilot.press("s")
        await wait_until(lambda: asked["thread"] in threads.threads, "all threads again")
        assert done["thread"] in threads.threads
        assert not text_of(threads, "#threads-note").startswith("Status:")


async def test_a_run_that_ends_while_the_thread_is_read_is_shown_ended(tui_mesh: TuiMesh) -> None:
    """The thread's load reads its runs, then its state: a run it lists for the first time can
    end between the two, its end events heard before it is listed. CI saw the screen keep such
    a run RUNNING for good (nothing of it came later). The load is held here after its runs
    were read, while the run is answered and ends; once let go, the screen shows it ended."""
    run = await cancelled_at_its_question(tui_mesh, "Move the settings")
    async with running_tui(tui_mesh.url) as pilot:
        screen = await open_thread(pilot, run["thread"])
        api = pilot.app.api  # type: ignore[attr-defined]
        read_runs = api.list_runs
        held, release = asyncio.Event(), asyncio.Event()

        async def runs_then_held(**kwargs: Any) -> list[dict[str, Any]]:
            """The runs as read now, handed back once `release` is set: the first answer that
            lists a run besides the cancelled one."""
            runs: list[dict[str, Any]] = await read_runs(**kwargs)
            if not held.is_set() and any(r.get("name") != run["name"] for r in runs):
                held.set()
                await release.wait()
            return runs

        api.list_runs = runs_then_held
        heard: list[tuple[str, str]] = []
        subscription = screen._subscription
        assert subscription is not None
        deliver = subscription.on_event

        def hear(event: dict[str, Any], sequence: int) -> None:
            heard.append((str(event.get("type")), str(event.get("subject"))))
            deliver(event, sequence)

        subscription.on_event = hear
        # Continued, as `c` does (a run without input), by another client.
        spec = {"workflow": "workflows/plan", "thread": run["thread"]}
        second = dict((await tui_mesh.post("/v1/runs", {"run": spec}))["run"])
        await wait_until(held.is_set, "the thread's load has read its runs")
        await reaches(tui_mesh, second["name"], {"RUN_STATUS_PAUSED"})
        await tui_mesh.post(f"/v1/{second['name']}:resume", {"answer": "approve"})
        await reaches(tui_mesh, second["name"], {"RUN_STATUS_COMPLETED"})
        await wait_until(
            lambda: ("run.completed", second["name"]) in heard, "the screen heard its end"
        )
        release.set()
        await wait_until(
            lambda: (
                screen.latest_run.get("name") == second["name"]
                and screen.latest_run.get("status") == "RUN_STATUS_COMPLETED"
            ),
            "the run is shown ended",
            seen=lambda: (screen.latest_run.get("name"), screen.latest_run.get("status")),
        )
        assert not screen.state.get("next") and "plan" in screen.state.get("values", {})
