"""The threads list: most recently active first, each with its status (LangGraph Server's: idle,
busy, interrupted, error — from ListThreads, one call a page), its run count and its first
message; `+` loads the next page, `s` shows only the threads with one status (all, idle, busy,
interrupted, error in turn: ListThreads' own `status` filter, so a page holds 50 of them). It
reloads (debounced) when a run starts, pauses, resumes or
ends, as the runs list does, and Enter opens a thread (`thread_view`).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from amelia_cli.tui.common import (
    PagedScreen,
    RowTable,
    TopBar,
    amelia,
    ask,
    cursor_key,
    first_pages,
    short_id,
    status_text,
    when,
)
from amelia_cli.tui.gateway import ApiError
from amelia_cli.tui.runs import LIFECYCLE
from amelia_cli.tui.threadstate import plural

PAGE_SIZE = 50
# What `s` steps through: every thread, then each status (ListThreads' `status`).
STATUS_FILTERS = ("", "idle", "busy", "interrupted", "error")


def thread_status(thread: dict[str, Any]) -> str:
    """`THREAD_STATUS_INTERRUPTED` → `interrupted`."""
    return str(thread.get("status", "")).removeprefix("THREAD_STATUS_").lower()


class ThreadsScreen(PagedScreen):
    """Threads, most recently active first. Enter opens one."""

    AUTO_FOCUS = "#threads-table"
    BINDINGS = [
        Binding("enter", "open", "Open"),
        Binding("plus", "more", "More"),
        Binding("s", "cycle_status", "Status"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.threads: dict[str, dict[str, Any]] = {}
        # The status shown (one of STATUS_FILTERS; empty: all).
        self.status = ""

    def compose(self) -> ComposeResult:
        yield TopBar("Threads")
        yield Static("", id="threads-note", classes="note")
        table = RowTable(id="threads-table", zebra_stripes=True)
        table.add_column("Thread", key="thread")
        table.add_column("Status", key="status")
        table.add_column("Runs", key="runs")
        table.add_column("Active", key="active")
        table.add_column("First message", key="preview")
        yield table
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.reload_on({"types": LIFECYCLE, "subject": "runs/*"})
        if self.live:
            self.reload_soon(0)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return bool(self.next_token) if action == "more" else True

    async def load(self, pages: int) -> None:
        """The first `pages` pages again (a reload keeps what `+` added)."""
        api = amelia(self).api

        def page(token: str) -> Awaitable[dict[str, Any]]:
            return api.list_threads(PAGE_SIZE, token, self.status)

        try:
            threads, token = await ask(self, first_pages(page, "threads", pages))
        except ApiError as exc:
            self.query_one("#threads-note", Static).update(f"[red]{exc}[/red]")
            return
        self.pages = max(pages, 1)
        self.show_threads(threads, token)

    def show_threads(self, threads: list[dict[str, Any]], token: str = "") -> None:
        """Fill the table, keeping the cursor on the thread it was on."""
        table: DataTable[Any] = self.query_one("#threads-table", DataTable)
        keep = self.selected()
        self.threads = {str(t.get("name")): t for t in threads}
        self.next_token = token
        self.refresh_bindings()
        table.clear()
        for name, thread in self.threads.items():
            table.add_row(
                short_id(name),
                status_text(thread_status(thread)),
                str(thread.get("runCount") or 0),
                when(thread.get("updateTime") or thread.get("createTime")),
                str(thread.get("preview") or "").replace("\n", " ")[:200] or "(no message)",
                key=name,
            )
        if keep in self.threads:
            table.move_cursor(row=table.get_row_index(keep), animate=False)
        count = len(threads)
        shown = f"Status: {self.status} · " if self.status else ""
        if count:
            note = shown + plural(count, f"{self.status} thread".strip())
            note += " · + loads more" if token else ""
            note += " · Enter opens one"
        elif self.status:
            note = f"{shown}no {self.status} thread (s shows the next status)."
        else:
            note = "No threads yet: every run starts one (n)."
        self.query_one("#threads-note", Static).update(note)

    def action_cycle_status(self) -> None:
        """The next status of STATUS_FILTERS, its first page read again."""
        at = STATUS_FILTERS.index(self.status)
        self.status = STATUS_FILTERS[(at + 1) % len(STATUS_FILTERS)]
        self.pages = 1
        self.action_reload()

    def selected(self) -> str:
        return cursor_key(self.query_one("#threads-table", DataTable))

    @on(DataTable.RowSelected, "#threads-table")
    def _row_chosen(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_open(self) -> None:
        name = self.selected()
        if name:
            amelia(self).open_thread(name)
