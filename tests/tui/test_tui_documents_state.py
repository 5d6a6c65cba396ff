"""The TUI's Documents tab has a State column saying how far a document's indexing has got
(it had none: an 8,008-chunk upload looked the same at 64 and at 6,784 chunks embedded)."""

from __future__ import annotations

from typing import Any

from textual.widgets import DataTable

from amelia_cli.tui.app import AmeliaApp
from amelia_cli.tui.documents import DocumentsScreen

INDEXING = {
    "name": "documents/7e7e7e7e-0003-4000-8000-000000000003",
    "title": "big.txt",
    "type": "DOCUMENT_TYPE_TEXT",
    "chunkCount": 8008,
    "embeddedChunkCount": 6784,
    "state": "DOCUMENT_STATE_INDEXING",
    "sizeBytes": "2456789",
    "updateTime": "2026-12-02T18:00:00Z",
}
FAILED = {
    **INDEXING,
    "name": "documents/7e7e7e7e-0004-4000-8000-000000000004",
    "embeddedChunkCount": 64,
    "state": "DOCUMENT_STATE_FAILED",
    "indexError": "indexing was interrupted 3 times in a row without progress",
}


async def test_documents_tab_shows_indexing_progress_at_80_columns() -> None:
    app = AmeliaApp("http://127.0.0.1:8000", live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.switch_mode("documents")
        screen = app.screen
        assert isinstance(screen, DocumentsScreen)
        screen.show_documents([INDEXING, FAILED])
        await pilot.pause()
        table: DataTable[Any] = screen.query_one("#doc-table", DataTable)
        state = [c.key.value for c in table.ordered_columns].index("state")
        assert table.get_row(INDEXING["name"])[state] == "indexing 84% 6784/8008"
        assert str(table.get_row(FAILED["name"])[state]).startswith("failed at 64/8008: ")
        # The column is on screen without scrolling sideways.
        left = sum(c.get_render_width(table) for c in table.ordered_columns[:state])
        assert left + len("indexing 84%") <= 80
