"""Edit a thread's state (UpdateThreadState), on its latest checkpoint or, from the history, on
an older one (a branch): a JSON editor whose refusal (the API's google.rpc.Status message) is
shown under it (a few lines that scroll), as the dashboard's State panel does.

The editor starts with the checkpoint's plain values (a key written back as it is stays as it
is); list values are left out, because a list such as `messages` goes through an appending
reducer: writing it back would add every entry again. The hint names them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static, TextArea

from amelia_cli.tui.common import amelia, ask
from amelia_cli.tui.gateway import ApiError


def parse_values(text: str) -> dict[str, Any]:
    """The editor's JSON as UpdateThreadState's `values`; ValueError says what is wrong."""
    try:
        value = json.loads(text.strip() or "{}")
    except ValueError as exc:
        raise ValueError(f"the values are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError('the values must be a JSON object, such as {"key": "value"}')
    if not value:
        raise ValueError("the values are empty: name at least one key of the state")
    return value


def editable(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The values the editor starts with, and the list keys left out."""
    lists = [key for key, value in values.items() if isinstance(value, list)]
    return {k: v for k, v in values.items() if k not in lists}, lists


class StateEditScreen(ModalScreen[dict[str, Any] | None]):
    """Dismissed with the new state (UpdateThreadState's answer), or None."""

    AUTO_FOCUS = "#edit-values"
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+l", "clear", "Clear"),
    ]

    def __init__(self, thread: str, state: dict[str, Any], branch: bool) -> None:
        super().__init__()
        self.thread = thread
        self.state = state
        self.branch = branch
        # One idempotency key per form: a retry after a lost reply writes once.
        self.request_id = str(uuid.uuid4())

    def compose(self) -> ComposeResult:
        step = self.state.get("step") or 0
        start, lists = editable(dict(self.state.get("values") or {}))
        if self.branch:
            title = f"[b]Branch from step {step}[/b]"
            where = (
                f"Written on step {step}'s checkpoint, not the latest: a branch (the later "
                "checkpoints stay in the history)."
            )
        else:
            title = "[b]Edit the state[/b]"
            where = "Written on the latest checkpoint."
        where += " Through the graph's reducers; the thread's next run starts from it."
        if lists:
            where += (
                f" Lists left out ({', '.join(lists)}): a reducer may append to them, so give "
                'only what to add, e.g. {"messages": [{"role": "user", "content": "…"}]}.'
            )
        with Vertical(id="edit-dialog"):
            yield Label(title)
            yield Static(Text(where), classes="hint", id="edit-where")
            yield TextArea(
                json.dumps(start, indent=2, ensure_ascii=False),
                soft_wrap=True,
                compact=True,
                tab_behavior="focus",
                id="edit-values",
            )
            # A refusal can be long (a paused thread's names the fork for each client): it
            # scrolls in a few lines, so the title and the buttons stay on an 80x24 screen.
            with VerticalScroll(id="edit-error-box"):
                yield Static("", id="edit-error", classes="error")
            with Horizontal(id="edit-buttons"):
                label = f"Save as a branch from step {step}" if self.branch else "Save state"
                yield Button(f"{label}  ctrl+s", variant="primary", id="edit-save", compact=True)
                yield Button("Clear  ctrl+l", id="edit-clear", compact=True)
                yield Button("Close  esc", id="edit-close", compact=True)

    @on(Button.Pressed, "#edit-close")
    def action_close(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#edit-clear")
    def action_clear(self) -> None:
        editor = self.query_one("#edit-values", TextArea)
        editor.load_text("{\n  \n}")
        editor.move_cursor((1, 2))
        editor.focus()

    @on(Button.Pressed, "#edit-save")
    def action_save(self) -> None:
        error = self.query_one("#edit-error", Static)
        try:
            values = parse_values(self.query_one("#edit-values", TextArea).text)
        except ValueError as exc:
            error.update(Text(str(exc)))
            return
        error.update("saving…")
        self.run_worker(self._save(values), exclusive=True, group="save")

    async def _save(self, values: dict[str, Any]) -> None:
        app = amelia(self)
        checkpoint = str(self.state.get("checkpoint") or "") if self.branch else ""
        try:
            state = await ask(
                self,
                app.api.update_thread_state(self.thread, values, checkpoint, self.request_id),
            )
        except ApiError as exc:
            code = f"{exc.code}: " if exc.code else ""
            self.query_one("#edit-error", Static).update(Text(f"refused — {code}{exc}"))
            return
        self.dismiss(state)
