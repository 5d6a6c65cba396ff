"""`amelia events`: the event log on a terminal, like `kubectl logs [-f]` or `nats sub`.

It reads the log through the gateway, as `amelia tui` and the dashboard do: what is stored comes
from `GET /v1/events` (ListEvents, page by page); `--follow` is one WebSocket subscription kept by
`EventSocket`, which reconnects by itself after a drop (a gateway restart, the network blinked)
and subscribes again after the last sequence printed, so every event is printed once, in order.
Ctrl-C ends it quietly with status 0; so does a reader that leaves (`amelia events | head`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import typer
from rich.text import Text

from amelia_cli.client import said
from amelia_cli.consoles import err
from amelia_cli.tui import gateway_url, url_option
from amelia_cli.tui.eventline import event_filter, event_line
from amelia_cli.tui.gateway import ApiError, EventSocket, GatewayApi
from amelia_common.settings import get_settings

_AGE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PAGE_SIZE = 1000


class StopError(Exception):
    """Following cannot go on (a refused filter, a wrong token): the message says why."""


@dataclass
class Start:
    """Where the log is read from: its beginning, after a sequence, from a time, or now."""

    beginning: bool = False
    after: int | None = None
    time: dt.datetime | None = None

    @classmethod
    def parse(cls, value: str) -> Start:
        """`beginning`, `now`, a sequence N (events after N), an RFC 3339 time, or an age
        like `10m` / `2h` (events of the last ten minutes, two hours)."""
        text = value.strip()
        if text in ("beginning", "0"):
            return cls(beginning=True)
        if text == "now":
            return cls()
        if text.isdigit():
            return cls(after=int(text))
        age = _AGE.match(text)
        if age:
            span = dt.timedelta(seconds=float(age.group(1)) * _UNITS[age.group(2)])
            return cls(time=dt.datetime.now(dt.UTC) - span)
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is not 'beginning', 'now', a sequence number, an RFC 3339 time "
                "(2026-01-31T12:00:00Z) or an age like 10m / 2h",
                param_hint="'--since'",
            ) from None
        return cls(time=when if when.tzinfo else when.astimezone())

    def is_now(self) -> bool:
        return not self.beginning and self.after is None and self.time is None

    def rfc3339(self) -> str:
        assert self.time is not None
        return self.time.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")

    def since(self) -> str | int:
        """The WebSocket's `since`."""
        if self.beginning:
            return "beginning"
        if self.after is not None:
            return self.after
        return self.rfc3339() if self.time is not None else "now"

    def query(self) -> dict[str, Any]:
        """ListEvents' start fields."""
        if self.after is not None:
            return {"afterSequence": self.after}
        return {"startTime": self.rfc3339()} if self.time is not None else {}


class Printer:
    """Writes each event once, in order: a line at the terminal's width, or a JSON line."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.last = 0
        # The terminal's width (or COLUMNS); 80 when the output goes to a pipe or a file.
        self.width = shutil.get_terminal_size((80, 24)).columns

    def show(self, event: dict[str, Any]) -> None:
        sequence = int(event.get("sequence") or 0)
        if sequence <= self.last:
            return  # already printed (a resumed subscription never repeats, but be sure)
        self.last = sequence
        if self.as_json:
            line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        else:
            line = event_line(event, self.width)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


async def print_history(
    api: GatewayApi, flt: dict[str, Any], start: Start, printer: Printer
) -> None:
    """Every stored event matching the filter from `start`, page by page."""
    query: dict[str, Any] = {
        "filter.types": flt.get("types", []),
        "filter.subject": flt.get("subject", ""),
        "pageSize": PAGE_SIZE,
        **start.query(),
    }
    while True:
        reply = await api.call("GET", "/v1/events", query=query)
        for event in reply.get("events", []):
            printer.show(event)
        if not reply.get("nextPageToken"):
            return
        query["pageToken"] = reply["nextPageToken"]


async def follow(socket: EventSocket, flt: dict[str, Any], start: Start, printer: Printer) -> None:
    """Print what the subscription delivers until Ctrl-C (or a `StopError`)."""
    stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    lost = ""

    def stop(error: BaseException) -> None:
        if not stopped.done():
            stopped.set_exception(error)

    def on_state(state: str, detail: str) -> None:
        nonlocal lost
        if state == "unauthorized":
            stop(StopError(f"the gateway refused the token ({detail}): set AMELIA_API_TOKEN"))
        elif state == "reconnecting" and detail and not lost:
            lost = detail  # said once per outage, not at every try
            if socket.connects:
                err.print(Text(f"lost the gateway ({detail}); reconnecting…", style="yellow"))
            else:
                err.print(
                    Text(f"waiting for the gateway at {socket.url} ({detail})…", style="yellow")
                )

    def on_subscribed() -> None:
        nonlocal lost
        lost = ""
        if socket.connects > 1:
            err.print(f"[dim]resumed after #{printer.last}[/dim]")
        else:
            err.print("[dim]following the event log; Ctrl-C stops[/dim]")

    def on_event(event: dict[str, Any], sequence: int) -> None:
        try:
            printer.show(event)
        except BrokenPipeError as exc:
            stop(exc)

    def on_error(message: str, final: bool) -> None:
        if final:
            stop(StopError(message))
        else:
            err.print(Text(message, style="yellow"))

    socket.on_state = on_state
    socket.subscribe(
        filter=flt,
        since=start.since(),
        on_event=on_event,
        on_subscribed=on_subscribed,
        on_error=on_error,
    )
    socket.start()
    try:
        await stopped
    finally:
        await socket.stop()


async def read_log(
    url: str, token: str, flt: dict[str, Any], start: Start, printer: Printer, following: bool
) -> None:
    if following:
        await follow(EventSocket.for_gateway(url, token), flt, start, printer)
        return
    api = GatewayApi(url, token)
    try:
        await print_history(api, flt, start, printer)
    finally:
        await api.aclose()


def run_quietly(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` until it ends or Ctrl-C; Ctrl-C and a closed pipe end with status 0, a
    refusal prints the gateway's reason and ends with status 1."""

    async def guarded() -> None:
        task = asyncio.ensure_future(work)
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(guarded())
    except BrokenPipeError:
        # The reader left. Point stdout at nothing so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (ApiError, StopError) as exc:
        err.print(said((f"{getattr(exc, 'code', '') or 'error'}:", "red"), f" {exc}"))
        raise typer.Exit(1) from None


# `eventline.short_subject`'s form for the collections named by uuid.
_SHORT_NAME = re.compile(r"^(runs|threads|documents)/[0-9a-fA-F]{8}$")


def events(
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Keep printing new events (resumes after a disconnect)."
    ),
    types: list[str] = typer.Option(
        [], "--type", "-t", help="Type pattern(s), e.g. 'run.*' (repeat or comma-separate)."
    ),
    subject: str = typer.Option(
        "", "--subject", "-s", help="'runs/<id>' or a collection 'runs/*'."
    ),
    since: str = typer.Option(
        "",
        help="beginning | now | N (after sequence N) | RFC 3339 time | an age like 10m. "
        "Default: beginning, or now with --follow.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON event per line."),
    url: str = url_option(),
) -> None:
    """Print the event log (with -f, follow it): one line per event, or JSON lines."""
    if _SHORT_NAME.match(subject.strip()):
        # An 80-column line's subject, copied: as a filter it would match nothing, silently.
        raise typer.BadParameter(
            f"{subject.strip()} is the start of a name (how 80-column lines show it); give it "
            "whole, e.g. runs/<uuid> (`amelia runs ls`; --json or a wider terminal shows it)",
            param_hint="--subject",
        )
    start = Start.parse(since or ("now" if follow else "beginning"))
    if start.is_now() and not follow:
        return  # nothing is stored after now
    flt = event_filter(types, subject)
    token = get_settings().api_token
    run_quietly(read_log(url or gateway_url(), token, flt, start, Printer(as_json), follow))
