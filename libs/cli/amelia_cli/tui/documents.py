"""Documents: search them (each passage with its source, headings and score) and list them; the
list reloads itself when a document is uploaded, indexed or deleted (`document.*` events)."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import ContentSwitcher, DataTable, Footer, Input, Label, Static

from amelia_cli.docstate import state_label
from amelia_cli.tui.common import ListScreen, RowTable, TopBar, amelia, ask, when
from amelia_cli.tui.gateway import ApiError
from amelia_cli.tui.passages import passage_text

TYPE_LABEL = {
    "DOCUMENT_TYPE_PDF": "PDF",
    "DOCUMENT_TYPE_MARKDOWN": "Markdown",
    "DOCUMENT_TYPE_TEXT": "Text",
    "DOCUMENT_TYPE_HTML": "HTML",
    "DOCUMENT_TYPE_CODE": "Code",
    "DOCUMENT_TYPE_WEB_PAGE": "Web page",
}


def size_label(value: Any) -> str:
    size = float(value or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


class DocumentsScreen(ListScreen):
    """`/` searches; `d` goes back to the list of documents."""

    AUTO_FOCUS = "#doc-table"
    BINDINGS = [
        Binding("slash", "focus_search", "Search"),
        Binding("d", "documents", "Documents"),
        Binding("r", "reload", "Reload"),
        Binding("escape", "documents", "List", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield TopBar("Documents")
        with Horizontal(classes="filters"):
            yield Label("search ")
            yield Input(
                placeholder="what are you looking for? Enter searches",
                compact=True,
                id="doc-query",
            )
        yield Static("", id="doc-note", classes="note")
        with ContentSwitcher(initial="doc-table", id="doc-views"):
            table = RowTable(id="doc-table", sideways=True)
            table.add_column("Title", key="title")
            table.add_column("Type", key="type")
            table.add_column("State", key="state")
            table.add_column("Chunks", key="chunks")
            table.add_column("Size", key="size")
            table.add_column("Updated", key="updated")
            yield table
            yield VerticalScroll(id="doc-results")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.reload_on({"types": ["document.*"]})

    def action_reload(self) -> None:
        if self.live:
            self.run_worker(self._load(), exclusive=True, group="docs")

    async def _load(self) -> None:
        app = amelia(self)
        try:
            documents = await ask(self, app.api.list_documents())
        except ApiError as exc:
            self.query_one("#doc-note", Static).update(f"[red]{exc}[/red]")
            return
        self.show_documents(documents)

    def show_documents(self, documents: list[dict[str, Any]]) -> None:
        table: DataTable[Any] = self.query_one("#doc-table", DataTable)
        table.clear()
        for doc in documents:
            table.add_row(
                str(doc.get("title") or doc.get("name", "")),
                TYPE_LABEL.get(str(doc.get("type")), ""),
                state_label(
                    str(doc.get("state") or ""),
                    int(doc.get("embeddedChunkCount") or 0),
                    int(doc.get("chunkCount") or 0),
                    str(doc.get("indexError") or ""),
                ),
                str(doc.get("chunkCount") or 0),
                size_label(doc.get("sizeBytes")),
                when(doc.get("updateTime") or doc.get("createTime")),
                key=str(doc.get("name")),
            )
        if self.query_one(ContentSwitcher).current == "doc-table":
            count = len(documents)
            self.query_one("#doc-note", Static).update(
                f"{count} document{'s' if count != 1 else ''}"
                if count
                else "No documents yet: `amelia ingest PATH` adds some."
            )

    @on(Input.Submitted, "#doc-query")
    def _search(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.query_one("#doc-note", Static).update("searching…")
            self.run_worker(self._run_search(event.value.strip()), exclusive=True, group="search")
        else:
            self.action_documents()

    async def _run_search(self, query: str) -> None:
        app = amelia(self)
        try:
            hits = await ask(self, app.api.search(query))
        except ApiError as exc:
            self.query_one("#doc-note", Static).update(f"[red]{exc}[/red]")
            return
        self.show_hits(query, hits)

    def show_hits(self, query: str, hits: list[dict[str, Any]]) -> None:
        self.hits = hits
        box = self.query_one("#doc-results", VerticalScroll)
        box.remove_children()
        box.mount_all(
            Static(passage_text(i, hit), classes="passage") for i, hit in enumerate(hits, 1)
        )
        self.query_one(ContentSwitcher).current = "doc-results"
        box.focus()
        count = len(hits)
        self.query_one("#doc-note", Static).update(
            f"{count} passage{'s' if count != 1 else ''} for “{query}” · d lists the documents"
            if count
            else f"Nothing found for “{query}”."
        )

    def action_focus_search(self) -> None:
        self.query_one("#doc-query", Input).focus()

    def action_documents(self) -> None:
        self.query_one(ContentSwitcher).current = "doc-table"
        self.query_one("#doc-table").focus()
        self.action_reload()
