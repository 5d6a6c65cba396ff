"""The runs list: newest first, filtered by status and workflow/agent, kept up to date live.

The list is reloaded (debounced) whenever a run starts, pauses, resumes or ends — a WebSocket
subscription to those lifecycle events, as the dashboard does — and after every reconnect, so
it is right again as soon as the gateway is back.
"""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Input, Label, Select, Static

from amelia_cli.fit import cells, room_for, shorten
from amelia_cli.tui.common import (
    ACTIVE,
    STATUSES,
    ListScreen,
    RowTable,
    TopBar,
    amelia,
    ask,
    cursor_key,
    output_tokens,
    short_id,
    shown_status,
    status_of,
    status_text,
    target_of,
    took,
    when,
)
from amelia_cli.tui.gateway import ApiError

LIFECYCLE = [
    "run.completed",
    "run.failed",
    "run.cancelled",
    "run.interrupted",
    "run.resumed",
    "agent.started",
    "workflow.started",
]
PAGE_SIZE = 100


def target_filter(text: str) -> dict[str, str]:
    """What the filter box says as ListRuns fields: `plan` / `workflows/plan` or `agents/x`."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("agents/"):
        return {"agent": text}
    return {"workflow": text if text.startswith("workflows/") else f"workflows/{text}"}


class RunsScreen(ListScreen):
    """Runs, newest first. Enter opens one; `n` starts a new one (anywhere)."""

    AUTO_FOCUS = "#runs-table"
    BINDINGS = [
        Binding("enter", "open", "Open"),
        Binding("s", "cycle_status", "Status"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("c", "cancel", "Cancel"),
        Binding("r", "reload", "Reload"),
        Binding("escape", "focus_table", "List", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, dict[str, Any]] = {}

    def compose(self) -> ComposeResult:
        yield TopBar("Runs")
        with Horizontal(id="runs-filters", classes="filters"):
            yield Label("status ")
            yield Select(
                [("any", ""), *((s, s) for s in STATUSES)],
                value="",
                allow_blank=False,
                compact=True,
                id="runs-status",
            )
            yield Label("  workflow/agent ")
            yield Input(placeholder="e.g. plan or agents/greeter", compact=True, id="runs-target")
        table = RowTable(id="runs-table", zebra_stripes=True)
        table.add_column("Run", key="run")
        table.add_column("Target", key="target")
        table.add_column("Status", key="status")
        table.add_column("Created", key="created")
        table.add_column("Took", key="took")
        table.add_column("Tokens", key="tokens")
        yield table
        yield Static("", id="runs-note", classes="note")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.reload_on({"types": LIFECYCLE, "subject": "runs/*"})
        if self.live:
            self.reload_soon(0)

    # -- loading ----------------------------------------------------------------------------

    def action_reload(self) -> None:
        if self.live:
            self.run_worker(self._load(), exclusive=True, group="runs")

    async def _load(self) -> None:
        app = amelia(self)
        status = self.query_one("#runs-status", Select).value
        target = target_filter(self.query_one("#runs-target", Input).value)
        try:
            runs = await ask(
                self,
                app.api.list_runs(
                    statuses=[f"RUN_STATUS_{str(status).upper()}"] if status else [],
                    page_size=PAGE_SIZE,
                    **target,
                ),
            )
        except ApiError as exc:
            self.query_one("#runs-note", Static).update(f"[red]{exc}[/red]")
            return
        self.show_runs(runs)

    def show_runs(self, runs: list[dict[str, Any]]) -> None:
        """Fill the table, keeping the cursor on the run it was on."""
        table: DataTable[Any] = self.query_one("#runs-table", DataTable)
        keep = self.selected()
        self.runs = {str(run.get("name")): run for run in runs}
        table.clear()
        rows = {
            name: [
                short_id(name),
                target_of(run),
                status_text(shown_status(run)),
                when(run.get("createTime")),
                took(run.get("duration")),
                output_tokens(run),
            ]
            for name, run in self.runs.items()
        }
        # The target gets what the other columns leave (a long one loses its middle), so
        # Status, Created, Took and Tokens stay on the screen (QA s26: a 63-character target
        # pushed them off at 80 columns).
        room = self._target_room(list(rows.values()))
        for name, row in rows.items():
            row[1] = shorten(str(row[1]), room)
            table.add_row(*row, key=name)
        if keep in self.runs:
            table.move_cursor(row=table.get_row_index(keep), animate=False)
        filtered = (
            self.query_one("#runs-status", Select).value
            or self.query_one("#runs-target", Input).value.strip()
        )
        if runs:
            note = f"{len(runs)} run{'s' if len(runs) != 1 else ''}" + (
                " (the latest)" if len(runs) >= PAGE_SIZE else ""
            )
            note += " · Enter opens one"
        else:
            note = "No runs match." if filtered else "No runs yet: press n to start one."
        self.query_one("#runs-note", Static).update(note)

    def _target_room(self, rows: list[list[Any]]) -> int:
        table: DataTable[Any] = self.query_one("#runs-table", DataTable)
        width = table.size.width or self.size.width or 80
        headers = [str(column.label) for column in table.ordered_columns]
        others = [max([len(headers[i])] + [cells(row[i]) for row in rows]) for i in (0, 2, 3, 4, 5)]
        # Each column's padding (a cell each side) and a vertical scrollbar.
        return max(room_for(width, others, 2 * len(headers) + 2), 12)

    def on_resize(self) -> None:
        if self.runs:
            self.show_runs(list(self.runs.values()))

    # -- actions ----------------------------------------------------------------------------

    def selected(self) -> str:
        return cursor_key(self.query_one("#runs-table", DataTable))

    @on(DataTable.RowSelected, "#runs-table")
    def _row_chosen(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_open(self) -> None:
        name = self.selected()
        if name:
            app = amelia(self)
            app.open_run(name)

    def action_cycle_status(self) -> None:
        select = self.query_one("#runs-status", Select)
        order = ["", *STATUSES]
        select.value = order[(order.index(str(select.value)) + 1) % len(order)]

    def action_focus_filter(self) -> None:
        self.query_one("#runs-target", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#runs-table").focus()

    @on(Select.Changed, "#runs-status")
    def _status_changed(self) -> None:
        self.reload_soon(0)

    @on(Input.Changed, "#runs-target")
    def _target_changed(self) -> None:
        self.reload_soon(0.4)

    @on(Input.Submitted, "#runs-target")
    def _target_submitted(self) -> None:
        self.reload_soon(0)
        self.action_focus_table()

    def action_cancel(self) -> None:
        name = self.selected()
        run = self.runs.get(name)
        if not run:
            return
        if status_of(run) not in ACTIVE:
            self.notify(f"{short_id(name)} is {status_of(run)}: nothing to cancel.")
            return
        app = amelia(self)
        app.confirm_cancel(name)
