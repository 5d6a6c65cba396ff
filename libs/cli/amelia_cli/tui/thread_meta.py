"""Edit a thread's metadata (UpdateThread), as the dashboard's thread page does: a JSON editor of
the whole object; saving sends what changed, and a key taken out as null, which removes it (the
merge the API does). The thread's state is another thing (`thread_edit.py`)."""

from __future__ import annotations

import json
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


def parse_metadata(text: str) -> dict[str, Any]:
    """The editor's JSON object (`{}` removes every key); ValueError says what is wrong."""
    try:
        value = json.loads(text.strip() or "{}")
    except ValueError as exc:
        raise ValueError(f"the metadata is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError('the metadata must be a JSON object, such as {"team": "herons"}')
    return value


def metadata_patch(old: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """UpdateThread's merge patch that turns `old` into `wanted`: changed keys, removed ones
    None (null)."""
    patch = {key: value for key, value in wanted.items() if old.get(key, ...) != value}
    patch.update({key: None for key in old if key not in wanted})
    return patch


class MetadataEditScreen(ModalScreen[dict[str, Any] | None]):
    """Dismissed with the thread as UpdateThread left it, or None."""

    AUTO_FOCUS = "#edit-values"
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("ctrl+s", "save", "Save"),
    ]

    def __init__(self, thread: str, metadata: dict[str, Any]) -> None:
        super().__init__()
        self.thread = thread
        self.metadata = metadata

    def compose(self) -> ComposeResult:
        where = (
            "The thread's own metadata (the threads list filters on it), not its state: a key "
            "changed or added is set, a key taken out is removed."
        )
        with Vertical(id="edit-dialog"):
            yield Label("[b]Edit the thread's metadata[/b]")
            yield Static(Text(where), classes="hint", id="edit-where")
            yield TextArea(
                json.dumps(self.metadata, indent=2, ensure_ascii=False),
                soft_wrap=True,
                compact=True,
                tab_behavior="focus",
                id="edit-values",
            )
            with VerticalScroll(id="edit-error-box"):
                yield Static("", id="edit-error", classes="error")
            with Horizontal(id="edit-buttons"):
                yield Button(
                    "Save metadata  ctrl+s", variant="primary", id="edit-save", compact=True
                )
                yield Button("Close  esc", id="edit-close", compact=True)

    @on(Button.Pressed, "#edit-close")
    def action_close(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#edit-save")
    def action_save(self) -> None:
        error = self.query_one("#edit-error", Static)
        try:
            wanted = parse_metadata(self.query_one("#edit-values", TextArea).text)
        except ValueError as exc:
            error.update(Text(str(exc)))
            return
        error.update("saving…")
        self.run_worker(self._save(metadata_patch(self.metadata, wanted)), exclusive=True)

    async def _save(self, patch: dict[str, Any]) -> None:
        app = amelia(self)
        try:
            thread = await ask(self, app.api.update_thread_metadata(self.thread, patch))
        except ApiError as exc:
            code = f"{exc.code}: " if exc.code else ""
            self.query_one("#edit-error", Static).update(Text(f"refused — {code}{exc}"))
            return
        self.dismiss(thread)
