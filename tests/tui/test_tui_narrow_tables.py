"""80-column lists keep their important columns (QA s26): a 63-character target pushed the runs
list's Status, Created, Took and Tokens off the screen on every row, and the documents table
showed "Chun" and hid Size and Updated. The documents' "the rag service … is unavailable" stayed
above the list after the service was back, until `r`: a failed load is tried again, and a list
loaded says so in place of the error."""

from __future__ import annotations

from typing import Any

import pytest
import tui_data
from textual.app import App
from textual.widgets import DataTable, Static
from tui_helpers import wait_until

import amelia_cli.tui.documents as documents_module
from amelia_cli.tui.app import AmeliaApp
from amelia_cli.tui.documents import DocumentsScreen
from amelia_cli.tui.gateway import ApiError
from amelia_cli.tui.runs import RunsScreen

LONG = "agents/a" + "b" * 55  # 63 characters, as QA named it


def frame(app: App[Any]) -> list[str]:
    return [strip.text for strip in app.screen._compositor.render_strips()]


async def drawn(pilot: Any, text: str) -> None:
    """Until `text` is on the screen (a busy machine takes a few frames to lay a table out)."""
    for _ in range(600):
        await pilot.pause(0.05)
        if any(text in row for row in frame(pilot.app)):
            return
    raise AssertionError(f"{text!r} never drawn: {frame(pilot.app)}")


def header_row(app: App[Any], *names: str) -> str:
    for row in frame(app):
        if all(name in row for name in names[:2]):
            return row
    raise AssertionError(f"no header row with {names}: {frame(app)}")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_a_long_target_leaves_every_column_of_the_runs_list_on_screen(
    size: tuple[int, int],
) -> None:
    runs = [
        tui_data.run(19, LONG, "completed", seconds="12.500s", tokens=1234),
        *tui_data.RUNS,
    ]
    app = AmeliaApp("http://127.0.0.1:9", live=False)
    async with app.run_test(size=size) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        screen.show_runs(runs)
        # Drawn once the table has laid its rows out (a busy machine takes a few frames).
        await drawn(pilot, "agents/a")
        rows = frame(app)
        header = header_row(app, "Run", "Target")
        for column in ("Run", "Target", "Status", "Created", "Took", "Tokens"):
            assert column in header, header
        long_row = next(row for row in rows if "agents/a" in row)
        assert "completed" in long_row and "1234" in long_row and "12.5" in long_row, long_row
        assert long_row.rstrip().endswith("1234"), long_row
        table: DataTable[Any] = screen.query_one("#runs-table", DataTable)
        shown = str(table.get_row(runs[0]["name"])[1])
        if size[0] == 80:
            # Cut, keeping its start and its end.
            assert shown.startswith("agents/ab") and shown.endswith("bbb") and "…" in shown
            assert shown in long_row
        else:
            assert shown == LONG and LONG in long_row
        # The short targets are whole.
        assert "agents/greeter" in "\n".join(rows)


DOCS = [
    {
        "name": "documents/7e7e7e7e-0001-4000-8000-000000000001",
        "title": "upload <img src=x onerror=alert(4)> 📄 a rather long title indeed.md",
        "type": "DOCUMENT_TYPE_MARKDOWN",
        "chunkCount": 8008,
        "embeddedChunkCount": 6784,
        "state": "DOCUMENT_STATE_INDEXING",
        "sizeBytes": "2456789",
        "updateTime": "2020-12-02T18:00:00Z",
    },
    {
        "name": "documents/7e7e7e7e-0002-4000-8000-000000000002",
        "title": "notes.txt",
        "type": "DOCUMENT_TYPE_TEXT",
        "chunkCount": 3,
        "embeddedChunkCount": 3,
        "state": "DOCUMENT_STATE_READY",
        "sizeBytes": "1200",
        "updateTime": "2020-12-02T18:00:01Z",
    },
]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_documents_columns_fit(size: tuple[int, int]) -> None:
    app = AmeliaApp("http://127.0.0.1:9", live=False)
    async with app.run_test(size=size) as pilot:
        await app.switch_mode("documents")
        screen = app.screen
        assert isinstance(screen, DocumentsScreen)
        screen.show_documents(DOCS)
        await drawn(pilot, "notes.txt")
        header = header_row(app, "Title", "Type")
        for column in ("Title", "Type", "State", "Size", "Updated"):
            assert column in header, header
        if size[0] >= 120:
            assert "Chunks" in header, header
        rows = frame(app)
        long_row = next(row for row in rows if "upload" in row)
        assert "indexing 84% 6784/8008" in long_row and "2.3 MB" in long_row, long_row
        assert "12-02" in long_row, long_row  # Updated
        notes = next(row for row in rows if "notes.txt" in row)
        assert "ready" in notes and "1.2 KB" in notes, notes


async def test_a_documents_error_goes_once_the_list_loads(monkeypatch: Any) -> None:
    monkeypatch.setattr(documents_module, "RETRY_SECONDS", 0.2, raising=False)
    answers: list[Any] = [
        ApiError(503, {"code": 14, "message": "the rag service at 127.0.0.1:1 is unavailable"}),
        DOCS,
    ]

    async def list_documents(page_size: int = 100) -> list[dict[str, Any]]:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    app = AmeliaApp("http://127.0.0.1:9", live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.switch_mode("documents")
        screen = app.screen
        assert isinstance(screen, DocumentsScreen)
        app.live = True  # its list from the fake below; no socket
        monkeypatch.setattr(app.api, "list_documents", list_documents)
        note = screen.query_one("#doc-note", Static)
        screen.action_reload()
        await wait_until(lambda: "unavailable" in str(note.render()), "the error is said", 10)
        # No key pressed, no event: the list is tried again and the error goes.
        await wait_until(
            lambda: "2 documents" in str(note.render()),
            "the loaded list replaces the error",
            10,
            seen=lambda: str(note.render()),
        )
        await pilot.pause()
        assert "unavailable" not in "\n".join(frame(app))
        assert screen.query_one("#doc-table", DataTable).row_count == 2
