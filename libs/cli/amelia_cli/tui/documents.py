"""Documents: search them (each passage with its source, headings and score) and list them; the
list reloads itself when a document is uploaded, indexed or deleted (`document.*` events)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import ContentSwitcher, DataTable, Footer, Input, Label, Static

from amelia_cli.docstate import state_label
from amelia_cli.fit import cells, room_for, shorten
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
# Under WIDE columns: the types said short and no Chunks column (the State says how many are
# indexed), so Title, State, Size and Updated fit 80 columns (QA s26: "Chun", and Size and
# Updated off the screen).
WIDE = 100
TYPE_SHORT = {"Markdown": "MD", "Web page": "Web"}
RETRY_SECONDS = 3.0


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
        self.documents: list[dict[str, Any]] = []
        self.wide: bool | None = None  # the columns laid out for

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
            yield RowTable(id="doc-table", sideways=True)
            yield VerticalScroll(id="doc-results")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._columns()
        self.reload_on({"types": ["document.*"]})

    def _columns(self) -> None:
        table: DataTable[Any] = self.query_one("#doc-table", DataTable)
        wide = (self.size.width or 80) >= WIDE
        if wide == self.wide:
            return
        self.wide = wide
        table.clear(columns=True)
        names = ["Title", "Type", "State", "Chunks", "Size", "Updated"]
        for name in names if wide else [n for n in names if n != "Chunks"]:
            table.add_column(name, key=name.lower())

    def on_resize(self) -> None:
        if self.wide is not None and self.wide != (self.size.width >= WIDE):
            self.show_documents(self.documents)

    def action_reload(self) -> None:
        if self.live:
            self.run_worker(self._load(), exclusive=True, group="docs")

    async def _load(self) -> None:
        app = amelia(self)
        try:
            documents = await ask(self, app.api.list_documents())
        except ApiError as exc:
            self.query_one("#doc-note", Static).update(Text(str(exc), style="red"))
            # Loaded again until it works: the error goes once the service is back (QA s26:
            # it stayed above the list until `r`).
            self.reload_soon(RETRY_SECONDS)
            return
        self.show_documents(documents)

    def show_documents(self, documents: list[dict[str, Any]]) -> None:
        self.documents = documents
        self._columns()
        table: DataTable[Any] = self.query_one("#doc-table", DataTable)
        table.clear()
        rows = {}
        for doc in documents:
            kind = TYPE_LABEL.get(str(doc.get("type")), "")
            row = {
                "title": str(doc.get("title") or doc.get("name", "")),
                "type": kind if self.wide else TYPE_SHORT.get(kind, kind),
                "state": state_label(
                    str(doc.get("state") or ""),
                    int(doc.get("embeddedChunkCount") or 0),
                    int(doc.get("chunkCount") or 0),
                    str(doc.get("indexError") or ""),
                ),
                "chunks": str(doc.get("chunkCount") or 0),
                "size": size_label(doc.get("sizeBytes")),
                "updated": when(doc.get("updateTime") or doc.get("createTime")),
            }
            rows[str(doc.get("name"))] = row
        keys = [str(column.key.value) for column in table.ordered_columns]
        width = table.size.width or self.size.width or 80
        # Each column's padding and a vertical scrollbar; a failed state's reason is cut first,
        # then the title gets what is left (the whole reason: `amelia docs ls`).
        gaps = 2 * len(keys) + 2
        fixed = {
            key: max([len(key)] + [cells(row[key]) for row in rows.values()])
            for key in keys
            if key not in ("title", "state")
        }
        state_room = max(len("indexing 84% 6784/8008"), (width - sum(fixed.values()) - gaps) // 2)
        for row in rows.values():
            row["state"] = shorten(row["state"], state_room, middle=False)
        state = max([len("State")] + [cells(row["state"]) for row in rows.values()])
        title_room = max(room_for(width, [*fixed.values(), state], gaps), 12)
        for name, row in rows.items():
            row["title"] = shorten(row["title"], title_room)
            table.add_row(*(row[key] for key in keys), key=name)
        if self.query_one(ContentSwitcher).current != "doc-results":
            # A list loaded says so, whatever went wrong before.
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
