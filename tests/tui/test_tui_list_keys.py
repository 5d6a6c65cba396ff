"""What QA of a fresh clone found in the TUI's lists and thread screens, driven by keys against
the real mesh: Home/End in every list move the cursor (DataTable's own scroll sideways, so Enter
opened a row not on the screen), the history's cursor stays on its checkpoint across a reload,
and a long refusal in the state editor leaves its title and buttons on an 80x24 screen."""

from __future__ import annotations

from typing import Any

from test_tui_threads import (
    ENDED,
    cancelled_at_its_question,
    open_thread,
    reaches,
    start,
    text_of,
)
from textual.widgets import DataTable
from tui_helpers import TuiMesh, on_screen, running_tui, wait_until

from amelia_cli.tui.run_view import RunScreen
from amelia_cli.tui.runs import RunsScreen
from amelia_cli.tui.thread_edit import StateEditScreen
from amelia_cli.tui.thread_view import ThreadScreen
from amelia_cli.tui.threads import ThreadsScreen

LONG = "\n".join(str(n) for n in range(1, 251))  # `seq 1 250` as the first message


def shows_cursor(table: DataTable[Any]) -> bool:
    """The cursor's row is on the screen, and the table is not scrolled sideways."""
    top = round(table.scroll_y)
    rows = table.scrollable_content_region.height - table.header_height
    return table.scroll_x == 0 and top <= table.cursor_row < top + rows


async def test_home_and_end_move_the_cursor_in_the_lists(tui_mesh: TuiMesh) -> None:
    threads = []
    for _ in range(3):
        run = await start(tui_mesh, "chat", LONG)
        await reaches(tui_mesh, run["name"], ENDED)
        threads.append(run["thread"])
    async with running_tui(tui_mesh.url) as pilot:
        await pilot.press("4")
        listed = on_screen(pilot, ThreadsScreen)
        await wait_until(lambda: set(threads) <= set(listed.threads), "the threads are listed")
        table = listed.query_one("#threads-table", DataTable)
        table.focus()
        # The first message is cut at the screen's edge: no sideways scroll, by any key.
        await pilot.press("end")
        assert table.cursor_row == table.row_count - 1 > 0
        assert shows_cursor(table)
        await pilot.press("right", "right")
        assert table.scroll_x == 0
        await pilot.press("home")
        assert table.cursor_row == 0 and shows_cursor(table)
        first = listed.selected()
        await pilot.press("enter")
        await wait_until(lambda: isinstance(pilot.app.screen, ThreadScreen), "a thread opens")
        assert on_screen(pilot, ThreadScreen).thread == first
        await pilot.press("escape")

        # The runs list: the same table.
        await pilot.press("1")
        runs = on_screen(pilot, RunsScreen)
        rows = runs.query_one("#runs-table", DataTable)
        await wait_until(lambda: rows.row_count >= 3, "the runs are listed")
        rows.focus()
        await pilot.press("end")
        assert rows.cursor_row == rows.row_count - 1 and shows_cursor(rows)
        await pilot.press("home")
        assert rows.cursor_row == 0 and shows_cursor(rows)


async def test_the_history_cursor_keeps_its_checkpoint_across_a_reload(
    tui_mesh: TuiMesh,
) -> None:
    run = await cancelled_at_its_question(tui_mesh, "Rename the settings")
    async with running_tui(tui_mesh.url) as pilot:
        screen = await open_thread(pilot, run["thread"])
        steps = len(screen.history)
        # Continue and approve: the run adds checkpoints while the thread is under it.
        await pilot.press("c")
        await wait_until(lambda: isinstance(pilot.app.screen, RunScreen), "the new run opens")
        continued = on_screen(pilot, RunScreen)
        await wait_until(lambda: continued.status == "paused", "asked again")
        await pilot.press("a")
        await wait_until(lambda: continued.status == "completed", "approved")
        await pilot.press("escape")
        # The end, read after the run's: while the run moves on, the state may be read between
        # a node's writes and the next checkpoint (`next` empty, as LangGraph reports it) with
        # the history read after that checkpoint. Runs are read first, so once the screen has
        # the run completed, its state and history are both the end.
        await wait_until(
            lambda: (
                screen.latest_run.get("name") == continued.run_name
                and screen.latest_run.get("status") == "RUN_STATUS_COMPLETED"
            ),
            "the thread shows the end",
            seen=lambda: screen.latest_run.get("status"),
        )
        assert not screen.state.get("next")
        assert len(screen.history) > steps
        # The cursor was on the newest checkpoint: it is on the newest one still, so two rows
        # down is the third newest, as the rows read.
        await pilot.press("h")
        table = screen.query_one("#thread-history", DataTable)
        assert screen.cursor_checkpoint() == screen.state["checkpoint"]
        await pilot.press("down", "down")
        third = screen.history[2]
        assert screen.cursor_checkpoint() == third["checkpoint"]
        await pilot.press("b")
        editor = on_screen(pilot, StateEditScreen)
        assert f"Branch from step {third['step']}" in str(editor.query_one("Label").render())
        await pilot.press("escape")
        await wait_until(lambda: pilot.app.screen is screen, "back on the thread")

        # On an older checkpoint, the cursor stays on it when a state edit adds one on top.
        newest = screen.state["checkpoint"]
        await pilot.press("e")
        on_screen(pilot, StateEditScreen)
        await pilot.press("ctrl+s")  # the values as they are: a new checkpoint
        await wait_until(lambda: pilot.app.screen is screen, "saved")
        await wait_until(lambda: screen.state["checkpoint"] != newest, "the edit's checkpoint")
        await wait_until(lambda: table.get_row_index(newest) == 1, "the rows are redrawn")
        assert screen.cursor_checkpoint() == third["checkpoint"]
        assert table.cursor_row == 3
        await pilot.press("b")
        editor = on_screen(pilot, StateEditScreen)
        assert f"Branch from step {third['step']}" in str(editor.query_one("Label").render())


async def test_a_long_refusal_scrolls_under_the_editor(tui_mesh: TuiMesh) -> None:
    run = await start(tui_mesh, "plan", "Move the logout button")
    await reaches(tui_mesh, run["name"], {"RUN_STATUS_PAUSED"})
    async with running_tui(tui_mesh.url) as pilot:
        await open_thread(pilot, run["thread"])
        await pilot.press("e")
        editor = on_screen(pilot, StateEditScreen)
        await pilot.press("ctrl+s")
        await wait_until(lambda: "refused" in text_of(editor, "#edit-error"), "the refusal")
        await pilot.pause()
        refusal = text_of(editor, "#edit-error")
        assert "FAILED_PRECONDITION" in refusal and "ForkRun" in refusal
        box = editor.query_one("#edit-error-box")
        # Whole, in a few lines that scroll: the title and the buttons stay on the screen.
        assert box.size.height <= 3 < box.virtual_size.height
        height = pilot.app.size.height
        for part in (editor.query_one("Label"), editor.query_one("#edit-save")):
            assert 0 <= part.region.y < height and part.region.height > 0, part
        assert editor.query_one("#edit-values").region.height > 0
