"""gRPC stubs for the CLI, pointed at the running mesh, and errors shown the way a person reads them."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import typer
from google.protobuf.timestamp_pb2 import Timestamp
from rich import box
from rich.cells import cell_len, chop_cells
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from amelia.v1 import agents_pb2_grpc, rag_pb2_grpc
from amelia_cli.consoles import err
from amelia_cli.fit import shorten
from amelia_cli.located import service_target, supervisor_words
from amelia_common.grpc_client import aio_channel
from amelia_common.grpc_server import from_servicer
from amelia_common.json_numbers import json_kind

if TYPE_CHECKING:
    # The asyncio stubs' types exist only in the generated .pyi (at run time a stub made on an
    # aio channel is the plain Stub class, with aio callables).
    from amelia.v1.agents_pb2_grpc import AgentServiceAsyncStub
    from amelia.v1.rag_pb2_grpc import RagServiceAsyncStub

# What to do about a part of the mesh that is not answering: check it, or start it.
UNREACHED_HINT = " — is the mesh running? `amelia status` checks it, `amelia up` starts it"
_ERRNO = re.compile(r"\s*\(\d+\)$")  # "Connection refused (111)"
# The RPCs the services' messages point at ("take one from ListRunSteps"), as the command a
# person runs for the same thing.
RPC_COMMANDS: Mapping[str, str] = {
    "CancelRun": "`amelia runs cancel`",
    "GetThreadState": "`amelia threads state`",
    "ListRunSteps": "`amelia runs steps`",
    "ListThreadHistory": "`amelia threads history`",
    "StreamRun": "`amelia runs show -f`",
}
Stub = TypeVar("Stub")
Result = TypeVar("Result")


@asynccontextmanager
async def channel_to(service: str) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to `service` of the mesh, found the one way every command finds it
    (`amelia_cli.located`); a call on it that could not reach the service fails naming it
    (`unreached`), whichever command made it."""
    settings, address = service_target(service)
    async with aio_channel(address, settings) as channel:
        try:
            yield channel
        except grpc.aio.AioRpcError as exc:
            if from_servicer(exc):
                raise  # a service answered (its dependency is down): its own words
            if exc.code() != grpc.StatusCode.UNAVAILABLE and not transport_words(exc.details()):
                raise
            raise unreached(exc, service, address) from exc


# gRPC's own words for a connection that broke (QA s26: "Delayed close due to in-progress
# write (ping timeout) (goaway sent)" was printed as it is), as a person reads them.
_TRANSPORT_WORDS = (
    (
        re.compile(r"ping timeout|keepalive watchdog", re.I),
        "it stopped answering on its connection: busy, frozen or gone",
    ),
    (re.compile(r"goaway|delayed close|in-progress write", re.I), "it closed the connection"),
    (
        re.compile(r"socket closed|connection reset|broken pipe|stream removed|\bEOF\b", re.I),
        "the connection to it was cut",
    ),
)


def transport_words(details: str | None) -> str:
    """gRPC's description of a broken connection said plainly; "" for anything else."""
    for pattern, words in _TRANSPORT_WORDS:
        if pattern.search(details or ""):
            return words
    return ""


def unreached(exc: grpc.aio.AioRpcError, service: str, address: str) -> grpc.aio.AioRpcError:
    """gRPC's UNAVAILABLE for a service it could not reach ("connections to all backends
    failing; last error: UNKNOWN: ipv4:…: Connection refused"), said as a person acts on it:
    which service, where, gRPC's last words on why, and what to do."""
    # The last clause of gRPC's text; a resolver's comes inside "[field:…]".
    why = (
        transport_words(exc.details())
        or _ERRNO.sub("", (exc.details() or "").rsplit(": ", 1)[-1].rstrip("]")).strip()
    )
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        exc.initial_metadata(),
        exc.trailing_metadata(),
        f"the {service} service at {address} is not answering"
        + (f" ({why})" if why else "")
        + (supervisor_words(service, address) or UNREACHED_HINT),
    )


@asynccontextmanager
async def _stub(service: str, make: Callable[[grpc.aio.Channel], Stub]) -> AsyncIterator[Stub]:
    async with channel_to(service) as channel:
        yield make(channel)


def rag() -> AbstractAsyncContextManager[RagServiceAsyncStub]:
    return _stub("rag", rag_pb2_grpc.RagServiceStub)


def agents() -> AbstractAsyncContextManager[AgentServiceAsyncStub]:
    return _stub("agents", agents_pb2_grpc.AgentServiceStub)


def said(*parts: str | tuple[str, str]) -> Text:
    """A line with server or user text in it, printed literally: plain strings and
    `(text, style)` pairs, none read as console markup (`[a-z]` in an error stays)."""
    return Text.assemble(*parts)


def in_cli_words(message: str, flags: Mapping[str, str] | None = None) -> str:
    """A service's message in the words of the command that got it: each request field the
    command filled from a flag or argument, as the service names it (`run.multitask_strategy`,
    `top_k`), said as what the person typed (`--multitask`, `--top-k`), and an RPC it points
    at (`ListRunSteps`) as the command that does the same.

    A name that is an identifier (a `_`, a `.` or a capital in it) is replaced wherever it
    stands; a plain word (`checkpoint`, `values`) only where it opens the message, the
    services' `FIELD VALUE is wrong` form: elsewhere it is just the word ("not a checkpoint
    id"). A field's JSON path inside a flag's value (`values.messages`) is left as it is."""
    words = {**RPC_COMMANDS, **(flags or {})}
    plain = [w for w in words if w.isalpha() and w.islower()]
    named = [w for w in words if w not in plain]
    found = "|".join(
        f"{start}(?:{'|'.join(re.escape(w) for w in sorted(names, key=len, reverse=True))})"
        for start, names in ((r"(?<![\w.])", named), ("^", plain))
        if names
    )
    # Not part of a longer name (`timeout_seconds`), nor a field's own path (`values.messages`).
    return re.sub(f"(?:{found})(?!\\w|\\.\\w)", lambda m: words[m.group(0)], message)


def fail(exc: grpc.aio.AioRpcError, flags: Mapping[str, str] | None = None) -> typer.Exit:
    """Print an RPC error as `CODE: message`, the message in the command's words
    (`in_cli_words`: `flags` maps the request fields it filled to its flags), and return the
    exit to raise."""
    message = in_cli_words(exc.details() or "", flags)
    err.print(said((f"{exc.code().name}:", "red"), f" {message}"))
    return typer.Exit(1)


def call_rpc(
    coro_factory: Callable[[], Awaitable[Result]], flags: Mapping[str, str] | None = None
) -> Result:
    """Run one command's RPCs to their result; an RPC error is printed (`fail`, naming the
    command's `flags` where the service names their request fields) and exits 1."""
    try:
        return asyncio.run(coro_factory())  # type: ignore[arg-type]
    except grpc.aio.AioRpcError as exc:
        raise fail(exc, flags) from exc


def json_object(text: str, hint: str) -> dict[str, Any]:
    """`text` read as a JSON object; a usage error naming the option `hint` when it is not
    JSON or is JSON of another kind (a list, a number...)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint=hint) from exc
    if not isinstance(value, dict):
        raise typer.BadParameter(
            f"must be a JSON object ({{...}}), not {json_kind(value)}", param_hint=hint
        )
    return value


def resource(collection: str, value: str) -> str:
    """`abc` or `runs/abc` → `runs/abc`; a value that names a collection already is sent as
    it is, for the service to say what is wrong with it (not `crons/Crons/…`)."""
    return value if "/" in value else f"{collection}/{value}"


def unprefixed(name: str) -> str:
    """`crons/<id>` → `<id>`, `agents/researcher` → `researcher`, `workflows/echo` → `echo`:
    a name as the commands take it, the brief form of a listing's name or target (`resource`
    puts the collection back)."""
    return name.partition("/")[2] or name


@dataclass(frozen=True)
class Column:
    """A listing's column, and what it does on a narrow terminal: a name, id, time or number
    stays on one line (so it can be copied); text folds; an optional column (`drop` > 0) is
    left out, highest `drop` first, while the table would not fit otherwise; a column with a
    `brief` form of its cells (`indexing 84% 6784/8008` → `indexing 84%`, `workflows/develop` →
    `develop`) shows that when the table does not fit with its cells whole, rather than fold a
    short value over two lines (`workflows/deve` / `lop`)."""

    header: str
    wraps: bool = False
    drop: int = 0
    brief: Callable[[str], str] | None = None
    # A long id given up in its middle (`agents/rese…ntifier-name`) rather than the columns
    # after it folded to a few cells or dropped (QA s26: one long agent id made Model
    # `offline` / `:echo` and took the description away).
    shortens: bool = False


FOLDED_AT_LEAST = 16  # cells a folding column keeps before optional columns go
SHORTENED_AT_LEAST = 24  # cells a `shortens` column keeps
_GAP = 3  # between two columns: padding, the separator, padding


def _min_width(column: Column, cells: list[str], whole: bool) -> int:
    """What the column needs: its widest line, or less for text that may fold; with `whole`,
    a column that has a brief form counts whole (that form, not a fold, makes it fit)."""
    lines = [column.header, *(line for cell in cells for line in cell.split("\n"))]
    widest = max(cell_len(line) for line in lines)
    folds = column.wraps and not (whole and column.brief)
    return min(widest, FOLDED_AT_LEAST) if folds else widest


def _width(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], shown: list[int], whole: bool = False
) -> int:
    """The cells the `shown` columns need at least, with the gaps between them."""
    needed = (_min_width(columns[i], [row[i] for row in rows], whole) for i in shown)
    return sum(needed) + _GAP * (len(shown) - 1)


# A folding cell breaks after a space or a name's separator (`workflows/` `develop`,
# `researcher-with-` `a-rather-long-`), never inside a word while its part fits the column.
_PART = re.compile(r".+?(?:[\s/_,:@-]+|$)")


def _parts(text: str) -> list[str]:
    return _PART.findall(text) or [text]


def folded(text: str, width: int) -> list[str]:
    """`text`'s lines broken to `width` cells after spaces and separators; a part wider than
    `width` alone is cut."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for part in _parts(paragraph):
            if cell_len((line + part).rstrip()) <= width:
                line += part
                continue
            if line.strip():
                lines.append(line.rstrip())
            *whole, line = chop_cells(part, max(width, 1))
            lines.extend(chunk.rstrip() for chunk in whole)
            line = line.lstrip()
        lines.append(line.rstrip())
    return lines


class _Folding:
    """A folding column's cell (rich folds only at spaces, then mid-word: `workflows/deve` /
    `lop`): its text as `folded` at the width the table gives it, literally (not markup)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        paragraphs = self.text.split("\n")
        part = max(cell_len(x.rstrip()) for p in paragraphs for x in _parts(p))
        return Measurement(part, max(cell_len(p) for p in paragraphs))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text("\n".join(folded(self.text, options.max_width)))


def _brief(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[list[str]]:
    """The rows with the cells of every column that has a `brief` form in that form."""
    return [
        [brief(cell) if (brief := columns[i].brief) else cell for i, cell in enumerate(row)]
        for row in rows
    ]


def _shortened(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], shown: list[int], width: int
) -> Sequence[Sequence[str]]:
    """The rows with a `shortens` column's long cells cut in the middle to the room the other
    columns leave: their values whole, a folding optional column its least."""
    for i in shown:
        if not columns[i].shortens:
            continue
        widest = [
            max(cell_len(x) for x in [columns[j].header, *(row[j] for row in rows)])
            for j in range(len(columns))
        ]
        others = [
            min(widest[j], FOLDED_AT_LEAST) if columns[j].drop and columns[j].wraps else widest[j]
            for j in shown
            if j != i
        ]
        room = max(width - sum(others) - _GAP * (len(shown) - 1), SHORTENED_AT_LEAST)
        if room < widest[i]:
            rows = [[shorten(c, room) if k == i else c for k, c in enumerate(r)] for r in rows]
    return rows


def listing(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    empty: str = "",
) -> None:
    """Print rows as a table that fits the terminal: names and times whole on one line,
    a column empty in every row left out, optional columns dropped until the rest fits, then
    short values in their brief form, text folded in what is left. Cells are literal text (a
    title `[red]` is not markup). No rows: the line `empty` (`no crons`), as `amelia search`
    says `no passages matched`, not a bare header."""
    if not rows and empty:
        console.print(said(empty))
        return
    shown = [i for i, column in enumerate(columns) if not rows or any(row[i] for row in rows)]
    rows = _shortened(columns, rows, shown, console.width)
    while _width(columns, rows, shown) > console.width and any(columns[i].drop for i in shown):
        shown.remove(max(shown, key=lambda i: columns[i].drop))
    if _width(columns, rows, shown, whole=True) > console.width:
        rows = _brief(columns, rows)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    # Beside a shortened id, a column that is not optional keeps its values whole when they
    # fit: the room the id gave up is theirs (an optional one folds in what is left).
    whole = {i for i in shown if columns[i].wraps and not columns[i].drop}
    needed = sum(
        max(cell_len(x) for x in [columns[i].header, *(r[i] for r in rows)])
        if i in whole
        else _min_width(columns[i], [row[i] for row in rows], True)
        for i in shown
    )
    if not any(columns[i].shortens for i in shown) or (
        needed + _GAP * (len(shown) - 1) > console.width
    ):
        whole = set()
    for i in shown:
        column = columns[i]
        folds = column.wraps and i not in whole
        table.add_column(column.header, no_wrap=not folds, overflow="fold" if folds else "ellipsis")
    for row in rows:
        table.add_row(
            *(
                _Folding(row[i]) if columns[i].wraps and i not in whole else Text(row[i])
                for i in shown
            )
        )
    console.print(table)


def ago(when: Timestamp, now: dt.datetime | None = None) -> str:
    """A time as how long ago it was (`5m ago`), short enough for a narrow listing; the date
    after a month."""
    then = when.ToDatetime(dt.UTC)
    seconds = ((now or dt.datetime.now(dt.UTC)) - then).total_seconds()
    if seconds >= 30 * 86400:
        return then.date().isoformat()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return "now"
