"""The event log, live: filtered by type patterns and subject, from now, the beginning or after a
sequence (a WebSocket subscription). At most MAX_ROWS rows stay in the table, so a flood of
tokens cannot slow the terminal; tokens are hidden unless asked for. Enter shows the whole event.
"""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Label, Static

from amelia_cli.tui.common import LiveScreen, RowTable, TopBar
from amelia_cli.tui.eventline import describe, event_filter, fit, local_time, short_subject

MAX_ROWS = 1000
WIDE = 120  # from this width on, subjects are shown whole


def type_style(kind: str) -> str:
    if any(word in kind for word in ("failed", "cancelled", "error", "warning")):
        return "red"
    if kind.endswith(("completed", "indexed")):
        return "green"
    if kind == "run.interrupted":
        return "yellow"
    return "cyan" if kind.startswith("run.") else ""


def read_since(text: str) -> Any:
    """now | beginning | N (after sequence N) | an RFC 3339 time, as the gateway takes it."""
    text = text.strip() or "now"
    return int(text) if text.isdigit() else text


class EventDetailScreen(ModalScreen[None]):
    """One event, whole, as JSON."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__()
        self.event = event

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="event-detail"):
            yield Static(json.dumps(self.event, indent=2, ensure_ascii=False))

    def action_close(self) -> None:
        self.dismiss()


class EventsScreen(LiveScreen):
    """`/` edits the filter (Enter applies it), Enter on a row shows the event."""

    AUTO_FOCUS = "#ev-feed"
    BINDINGS = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("t", "toggle_tokens", "Tokens"),
        Binding("space", "pause", "Pause"),
        Binding("x", "clear", "Clear"),
        Binding("escape", "focus_table", "Feed", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.hide_tokens = True
        self.paused = False
        self.received = 0
        self.hidden = 0
        self.waiting: list[tuple[dict[str, Any], int]] = []
        self.shown: dict[str, dict[str, Any]] = {}

    def compose(self) -> ComposeResult:
        yield TopBar("Events")
        with Horizontal(classes="filters"):
            yield Label("types ")
            yield Input(placeholder="run.*, document.*", compact=True, id="ev-types")
            yield Label(" subject ")
            yield Input(placeholder="runs/*", compact=True, id="ev-subject")
            yield Label(" since ")
            yield Input(value="now", compact=True, id="ev-since")
        yield Static("", id="ev-counts", classes="note")
        table = RowTable(id="ev-feed")
        table.add_column("Seq", key="seq")
        table.add_column("Time", key="time")
        table.add_column("Type", key="type")
        table.add_column("Subject", key="subject")
        table.add_column("Data", key="data")
        yield table
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.restart()

    def set_filter(self, *, types: str = "", subject: str = "", since: str = "now") -> None:
        """Show these events instead (e.g. `e` on a run: its subject from the beginning)."""
        self.query_one("#ev-types", Input).value = types
        self.query_one("#ev-subject", Input).value = subject
        self.query_one("#ev-since", Input).value = since
        self.restart()

    def current_filter(self) -> dict[str, Any]:
        return event_filter(
            [self.query_one("#ev-types", Input).value],
            self.query_one("#ev-subject", Input).value,
        )

    def restart(self) -> None:
        """(Re)subscribe with the filter in the boxes; the feed starts over."""
        self.unfollow()
        self.action_clear()
        self.received = self.hidden = 0
        since = read_since(self.query_one("#ev-since", Input).value)
        if self.live:
            self.follow(
                filter=self.current_filter(),
                since=since,
                on_event=self.add_event,
                on_error=self._stream_error,
                on_subscribed=self._subscribed,
            )
        self._show_counts("waiting for events…" if since == "now" else "replaying…")

    def _subscribed(self) -> None:
        if not self.received:
            self._show_counts("subscribed; waiting for events…")

    def _stream_error(self, message: str, final: bool) -> None:
        self._show_counts(f"[red]{'the feed stopped: ' if final else ''}{message}[/red]")

    def _show_counts(self, note: str = "") -> None:
        parts = [f"{self.received} received"]
        if self.hidden:
            parts.append(f"{self.hidden} run.token hidden (t shows them)")
        if self.paused:
            parts.append(f"paused, {len(self.waiting)} waiting")
        if note:
            parts.append(note)
        self.query_one("#ev-counts", Static).update(" · ".join(parts))

    # -- the feed ---------------------------------------------------------------------------

    def add_event(self, event: dict[str, Any], sequence: int) -> None:
        self.received += 1
        if self.hide_tokens and event.get("type") == "run.token":
            self.hidden += 1
        elif self.paused:
            self.waiting.append((event, sequence))
            del self.waiting[:-MAX_ROWS]
        else:
            self._add_row(event, sequence)
        self._show_counts()

    def _add_row(self, event: dict[str, Any], sequence: int) -> None:
        table: DataTable[Any] = self.query_one("#ev-feed", DataTable)
        follow = table.cursor_row >= table.row_count - 1
        kind = str(event.get("type", ""))
        subject = str(event.get("subject", "")) or "-"
        wide = self.size.width >= WIDE
        # The data gets what the other columns leave of the width (a scrollbar's worth less).
        others = sum(
            column.get_render_width(table)
            for key, column in table.columns.items()
            if key.value != "data"
        )
        room = max(self.size.width - others - 4, 20)
        key = str(sequence)
        self.shown[key] = event
        table.add_row(
            Text(str(sequence), style="dim"),
            local_time(str(event.get("time", ""))),
            Text(kind, style=type_style(kind)),
            subject if wide else short_subject(subject),
            fit(describe(event), room),
            key=key,
        )
        while table.row_count > MAX_ROWS:
            oldest = next(iter(self.shown))
            table.remove_row(oldest)
            del self.shown[oldest]
        if follow:
            table.move_cursor(row=table.row_count - 1, animate=False)

    # -- actions ----------------------------------------------------------------------------

    @on(Input.Submitted)
    def _apply(self) -> None:
        self.restart()
        self.action_focus_table()

    @on(DataTable.RowSelected, "#ev-feed")
    def _row_chosen(self, event: DataTable.RowSelected) -> None:
        chosen = self.shown.get(str(event.row_key.value))
        if chosen is not None:
            self.app.push_screen(EventDetailScreen(chosen))

    def action_focus_filter(self) -> None:
        self.query_one("#ev-types", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#ev-feed").focus()

    def action_toggle_tokens(self) -> None:
        self.hide_tokens = not self.hide_tokens
        self.notify("run.token events hidden" if self.hide_tokens else "run.token events shown")
        self._show_counts()

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            for event, sequence in self.waiting:
                self._add_row(event, sequence)
            self.waiting.clear()
        self._show_counts()

    def action_clear(self) -> None:
        self.query_one("#ev-feed", DataTable).clear()
        self.shown.clear()
        self.waiting.clear()
        self._show_counts()
