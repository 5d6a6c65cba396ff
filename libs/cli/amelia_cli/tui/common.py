"""What every screen of the TUI shares: the top bar, run statuses, small formatters, a yes/no."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import DataTable, Label, Static

from amelia_cli.tui.eventline import local_time, seconds
from amelia_cli.tui.gateway import ApiError, EventSocket, GatewayApi, Subscription

T = TypeVar("T")

STATUS_STYLE = {
    "queued": "dim",
    "running": "bold cyan",
    "paused": "bold yellow",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
    # A completed plan whose design was rejected (its output's `status`), as the dashboard says.
    "rejected": "yellow",
    # A thread's status (ListThreads), styled as the run statuses it stands for.
    "idle": "green",
    "busy": "bold cyan",
    "interrupted": "bold yellow",
    "error": "bold red",
}
ACTIVE = {"queued", "running", "paused"}
STATUSES = ("queued", "running", "paused", "completed", "failed", "cancelled")
SECTIONS = (("1", "Runs"), ("2", "Events"), ("3", "Documents"), ("4", "Threads"))
CONNECTION_LABEL = {
    "idle": ("○ not connected", "dim"),
    "connecting": ("◌ connecting", "yellow"),
    "open": ("● live", "green"),
    "reconnecting": ("◌ reconnecting", "yellow"),
    "unauthorized": ("✕ wrong token", "bold red"),
    "closed": ("○ closed", "dim"),
}


def status_of(run: dict[str, Any]) -> str:
    """`RUN_STATUS_PAUSED` → `paused`."""
    return str(run.get("status", "")).removeprefix("RUN_STATUS_").lower() or "queued"


def shown_status(run: dict[str, Any], status: str = "") -> str:
    """`status` (the run's own by default) as the dashboard shows it: a completed run whose
    output says it was rejected (a plan's design) reads `rejected` (QA s26: "completed")."""
    status = status or status_of(run)
    output = run.get("output")
    if status == "completed" and isinstance(output, dict) and output.get("status") == "rejected":
        return "rejected"
    return status


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def short_id(name: str) -> str:
    """`runs/0b9f1c2e-…` → `0b9f1c2e`."""
    return name.rsplit("/", 1)[-1][:8]


def target_of(run: dict[str, Any]) -> str:
    """`workflows/plan` → `plan`; an agent keeps its collection (`agents/greeter`)."""
    target = str(run.get("workflow") or run.get("agent") or "")
    return target.removeprefix("workflows/")


def when(value: Any) -> str:
    return local_time(str(value or ""))


def took(value: Any) -> str:
    return seconds(value)


def output_tokens(run: dict[str, Any]) -> str:
    usage = run.get("usage") or {}
    count = int(usage.get("outputTokens") or 0)
    return str(count) if count else ""


class RowTable(DataTable[Any]):
    """Every list's table (runs, events, documents, threads, a thread's history): a row cursor
    that Home and End move to the first and last row, as in every list, and no sideways scroll
    but in the documents' — what is wider than the screen (a thread's first message, an event's
    data) is cut at its right edge. DataTable's own Home/End scroll sideways and leave the
    cursor where it was, so Enter could open a row that is not on the screen, and End showed a
    blank table."""

    DEFAULT_CSS = """
    RowTable { overflow-x: hidden; }
    RowTable.-sideways { overflow-x: auto; }
    """
    BINDINGS = [
        Binding("home", "scroll_top", "First", show=False),
        Binding("end", "scroll_bottom", "Last", show=False),
    ]
    sideways = False  # read by max_scroll_x while DataTable's __init__ runs

    def __init__(
        self,
        *,
        id: str,
        zebra_stripes: bool = False,
        classes: str | None = None,
        sideways: bool = False,
    ):
        super().__init__(id=id, cursor_type="row", zebra_stripes=zebra_stripes, classes=classes)
        # The documents' table scrolls sideways (Left, Right): a long title would otherwise
        # hide the columns after it.
        self.sideways = sideways
        self.set_class(sideways, "-sideways")

    @property
    def max_scroll_x(self) -> int:
        """0 (unless `sideways`): Left, Right, a wheel or the cursor never move it sideways."""
        return super().max_scroll_x if self.sideways else 0


def cursor_key(table: DataTable[Any]) -> str:
    """The key of the row under the table's cursor, or "" when it has none."""
    if table.row_count == 0 or not 0 <= table.cursor_row < table.row_count:
        return ""
    return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value or "")


class Amelia(Protocol):
    """What the screens use of the app (`app.AmeliaApp`), named here because the app imports
    every screen: its gateway, its socket, and the moves between screens."""

    api: GatewayApi
    socket: EventSocket
    live: bool

    def open_run(self, name: str) -> None: ...

    def open_thread(self, name: str) -> None: ...

    def show_events(self, **flt: str) -> None: ...

    def confirm_cancel(self, name: str) -> None: ...


def amelia(widget: Widget) -> Amelia:
    """The app `widget` is in, as the screens know it."""
    return cast(Amelia, widget.app)


def closed(widget: Widget) -> bool:
    """Its screen was closed (or the app is ending): its children may be gone already."""
    return not widget.is_attached or not widget.display


async def ask(widget: Widget, request: Awaitable[T]) -> T:
    """The answer to a request a worker of `widget` makes, or the worker is cancelled when the
    widget's screen closed while the request was on its way (Escape on a run that is loading,
    `q` while a list reloads): the answer, or its error, has nowhere to go."""
    try:
        answer = await request
    except ApiError:
        if closed(widget):
            raise asyncio.CancelledError from None
        raise
    if closed(widget):
        raise asyncio.CancelledError
    return answer


def subscribe(widget: Widget, **options: Any) -> Subscription:
    """`app.socket.subscribe(...)` for a screen, its `on_...` callbacks dropped once the screen
    is closing: the socket may deliver an event between the removal of the screen's boxes and
    its unsubscribe."""

    def guarded(handler: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            if not closed(widget):
                handler(*args)

        return call

    for name, value in options.items():
        if name.startswith("on_") and callable(value):
            options[name] = guarded(value)
    return amelia(widget).socket.subscribe(**options)


class LiveScreen(Screen[None]):
    """A screen fed by one subscription on the gateway's socket at a time: `follow` (re)subscribes
    and leaving the screen ends it."""

    def __init__(self) -> None:
        super().__init__()
        self._subscription: Subscription | None = None

    @property
    def live(self) -> bool:
        """Whether the app talks to a gateway (not a snapshot of fixed data)."""
        return bool(getattr(self.app, "live", False))

    def follow(self, **options: Any) -> None:
        """`subscribe(self, **options)` instead of what the screen followed before."""
        self.unfollow()
        self._subscription = subscribe(self, **options)

    def unfollow(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def on_unmount(self) -> None:
        self.unfollow()


class ListScreen(LiveScreen):
    """A list loaded by `action_reload`, loaded again (once things settle) whenever an event it
    shows arrives, and when the socket (re)subscribes (events missed while it was away)."""

    def __init__(self) -> None:
        super().__init__()
        self.reload_soon = Debounced(self, self.action_reload)

    def reload_on(self, event_filter: dict[str, Any]) -> None:
        """Follow the events of `event_filter` from now on, each a reason to reload."""
        if self.live:
            self.follow(
                filter=event_filter,
                since="now",
                on_event=lambda event, sequence: self.reload_soon(),
                on_subscribed=self.reload_soon,
            )

    def action_reload(self) -> None:
        raise NotImplementedError


class PagedScreen(ListScreen):
    """A list read page by page (page tokens): `+` (`action_more`) shows one page more, and a
    reload reads again as many pages as are shown. `load(pages)` reads and shows them."""

    def __init__(self) -> None:
        super().__init__()
        self.pages = 1
        self.next_token = ""

    def action_reload(self) -> None:
        if self.live:
            self.run_worker(self.load(self.pages), exclusive=True, group="load")

    def action_more(self) -> None:
        if self.live and self.next_token:
            self.run_worker(self.load(self.pages + 1), exclusive=True, group="load")

    async def load(self, pages: int) -> None:
        raise NotImplementedError


async def first_pages(
    fetch: Callable[[str], Awaitable[dict[str, Any]]], key: str, pages: int
) -> tuple[list[dict[str, Any]], str]:
    """The `key` items of the first `pages` pages (`fetch(page_token)`) and the token after."""
    items: list[dict[str, Any]] = []
    token = ""
    for _ in range(pages):
        reply = await fetch(token)
        items += reply.get(key, [])
        token = str(reply.get("nextPageToken") or "")
        if not token:
            break
    return items, token


class TabBar(Static):
    """`Output o  Activity v  Passages (2) p`, the shown tab lit: `tabs` maps each tab to its
    (title, key, pane id); `counts` puts a number after a title."""

    DEFAULT_CSS = """
    TabBar { height: 1; padding: 0 1; background: $panel; }
    """
    active = reactive("")
    counts: reactive[dict[str, int]] = reactive(dict, always_update=True)

    def __init__(self, tabs: dict[str, tuple[str, str, str]], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.tabs = tabs
        self.set_reactive(TabBar.active, next(iter(tabs)))

    def render(self) -> Text:
        bar = Text()
        for tab, (title, key, _) in self.tabs.items():
            count = self.counts.get(tab)
            if count:
                title = f"{title} ({count})"
            bar.append(f" {title} ", style="bold reverse" if tab == self.active else "")
            bar.append(f"{key}  ", style="dim")
        return bar


class Debounced:
    """`action` once things settle: calls within `delay` of each other make one call (a burst
    of events is one reload); a delay of 0 calls it now."""

    def __init__(self, widget: Widget, action: Callable[[], object]) -> None:
        self.widget = widget
        self.action = action
        self.timer: Timer | None = None

    def __call__(self, delay: float = 0.3) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer = None
        if delay <= 0:
            self.action()
        else:
            self.timer = self.widget.set_timer(delay, self.action)


class TopBar(Static):
    """The sections with their keys (the current one lit) on the left, the live connection to
    the gateway on the right."""

    DEFAULT_CSS = """
    TopBar { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    def __init__(self, section: str, title: str = "") -> None:
        super().__init__()
        self.section = section
        self.title = title

    def on_mount(self) -> None:
        self.watch(self.app, "connection", self._show, init=True)

    def _show(self, connection: str) -> None:
        label, style = CONNECTION_LABEL.get(connection, (connection, ""))
        where = str(getattr(self.app, "url", "")).removeprefix("http://")
        left = Text.assemble(("Amelia", "bold"), " ")
        for key, name in SECTIONS:
            lit = name == self.section
            left.append(f" {key} ", style="bold reverse" if lit else "dim")
            left.append(f"{name} ", style="bold" if lit else "dim")
        if self.title:
            left.append(f"› {self.title}", style="bold")
        right = Text.assemble((label, style), " ", (where, "dim"))
        room = self.size.width - 2
        if left.cell_len + right.cell_len + 1 > room:
            right = Text(label, style=style)
        gap = max(room - left.cell_len - right.cell_len, 1)
        self.update(Text.assemble(left, " " * gap, right))

    def on_resize(self) -> None:
        self._show(str(getattr(self.app, "connection", "")))


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; `y` or Enter says yes, `n` or Escape says no."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 60; max-width: 100%; height: auto; border: thick $warning; padding: 1 2;
        background: $surface;
    }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            yield Label("[b]y[/b] yes   [b]n[/b] no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
