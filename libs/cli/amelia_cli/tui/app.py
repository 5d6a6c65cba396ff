"""The TUI application: four screens (runs, events, documents, threads) switched with 1/2/3/4, a
run view pushed over the runs (or over a thread), a thread's view over the threads, the
start-a-run form on `n` anywhere, and the keys on `?`.

One `GatewayApi` and one `EventSocket` serve every screen; the socket's state is the top bar's
`● live` / `◌ reconnecting`. With `live=False` nothing connects and screens show only what they
are given (the snapshot tests draw fixed data that way).
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from amelia_cli.tui.common import ConfirmScreen, short_id
from amelia_cli.tui.documents import DocumentsScreen
from amelia_cli.tui.events_view import EventsScreen
from amelia_cli.tui.gateway import ApiError, EventSocket, GatewayApi
from amelia_cli.tui.run_view import RunScreen
from amelia_cli.tui.runs import RunsScreen
from amelia_cli.tui.start import StartRunScreen
from amelia_cli.tui.thread_edit import StateEditScreen
from amelia_cli.tui.thread_view import ThreadScreen
from amelia_cli.tui.threads import ThreadsScreen

KEY_NAMES = {"slash": "/", "question_mark": "?", "escape": "esc", "space": "space", "plus": "+"}


def key_label(keys: str) -> str:
    return ", ".join(KEY_NAMES.get(k, k) for k in keys.split(","))


class HelpScreen(ModalScreen[None]):
    """Every key of every screen, read from their bindings (so this list cannot drift)."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        sections: list[tuple[str, list[BindingType]]] = [
            ("Anywhere", AmeliaApp.BINDINGS),
            ("Runs (1)", RunsScreen.BINDINGS),
            ("A run (Enter on a run)", RunScreen.BINDINGS),
            ("Events (2)", EventsScreen.BINDINGS),
            ("Documents (3)", DocumentsScreen.BINDINGS),
            ("Threads (4)", ThreadsScreen.BINDINGS),
            ("A thread (Enter on a thread)", ThreadScreen.BINDINGS),
            ("Edit a thread's state (e, b)", StateEditScreen.BINDINGS),
            ("Start a run (n)", StartRunScreen.BINDINGS),
        ]
        parts: list[RenderableType] = [Text("Amelia keys — Esc closes, ↓ scrolls\n", style="bold")]
        for title, bindings in sections:
            keys = [
                Text.assemble((f"{key_label(binding.key):<5} ", "bold"), binding.description)
                for binding in bindings
                if isinstance(binding, Binding) and binding.description
            ]
            # As many columns as the width takes: the whole list fits 120×40 (80×24 scrolls).
            parts += [Text(title, style="bold underline"), Columns(keys, padding=(0, 3))]
        parts.append(
            Text.assemble(("tab", "bold"), " / ", ("shift+tab", "bold"), " the next / previous box")
        )
        with VerticalScroll(id="help"):
            yield Static(Group(*parts))

    def action_close(self) -> None:
        self.dismiss()


class AmeliaApp(App[None]):
    """`amelia tui`."""

    CSS_PATH = "amelia.tcss"
    TITLE = "Amelia"
    ENABLE_COMMAND_PALETTE = False
    MODES: ClassVar[dict[str, Any]] = {
        "runs": RunsScreen,
        "events": EventsScreen,
        "documents": DocumentsScreen,
        "threads": ThreadsScreen,
    }
    DEFAULT_MODE = "runs"
    # Screens get `-tall` from 36 lines and `-wide` from 120 columns (more room for details).
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    BINDINGS: ClassVar[list[BindingType]] = [
        # Shown in the top bar, not the footer.
        Binding("1", "switch_mode('runs')", "Runs", show=False),
        Binding("2", "switch_mode('events')", "Events", show=False),
        Binding("3", "switch_mode('documents')", "Documents", show=False),
        Binding("4", "switch_mode('threads')", "Threads", show=False),
        Binding("n", "new_run", "New run"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    connection = reactive("idle")

    def __init__(self, url: str, token: str = "", *, live: bool = True) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.live = live
        self.api = GatewayApi(self.url, token)
        self.socket = EventSocket.for_gateway(self.url, token, on_state=self._socket_state)

    def on_mount(self) -> None:
        if self.live:
            self.socket.start()

    async def on_unmount(self) -> None:
        await self.socket.stop()
        await self.api.aclose()

    def _socket_state(self, state: str, detail: str) -> None:
        if state == "unauthorized" and self.connection != state:
            self.notify(
                f"The gateway refused the token ({detail}): set AMELIA_API_TOKEN.",
                severity="error",
                timeout=10,
            )
        self.connection = state

    # -- navigation -------------------------------------------------------------------------

    def open_run(self, name: str) -> None:
        """The run, over the runs; from a thread, over the thread (Esc goes back to it)."""
        if self.current_mode not in ("runs", "threads"):
            self.switch_mode("runs")
        self.push_screen(RunScreen(name))

    def open_thread(self, name: str) -> None:
        if self.current_mode != "threads":
            self.switch_mode("threads")
        self.push_screen(ThreadScreen(name))

    def show_events(self, **flt: str) -> None:
        self.switch_mode("events")
        screen: Screen[Any] = self.screen
        if isinstance(screen, EventsScreen):
            screen.set_filter(**flt)

    def action_new_run(self) -> None:
        if isinstance(self.screen, StartRunScreen):
            return

        def started(name: str | None) -> None:
            if name:
                self.open_run(name)

        self.push_screen(StartRunScreen(), started)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def confirm_cancel(self, name: str) -> None:
        """Ask, then cancel the run."""

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(self._cancel(name), group="cancel")

        self.push_screen(ConfirmScreen(f"Cancel run {short_id(name)}?"), answered)

    async def _cancel(self, name: str) -> None:
        try:
            await self.api.cancel_run(name, "cancelled from the terminal UI")
        except ApiError as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"cancelling {short_id(name)}")
