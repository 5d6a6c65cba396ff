"""Rows to protobuf messages, and resource names (`agents/x`, `threads/<uuid>`, `runs/<uuid>`)."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from amelia.v1 import agents_pb2
from amelia_agents.models import AgentRow, RunRow, RunState, ThreadRow
from amelia_common.errors import InvalidArgumentError, NotFoundError, check_json
from amelia_common.eventlog import timestamp_problem
from amelia_common.names import BadNameError, uuid_name

Found = TypeVar("Found")
AGENT_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def not_found(name: str) -> NotFoundError:
    """NOT_FOUND for the resource `name` (`agents/x`, `threads/<uuid>`, `runs/<uuid>`)."""
    return NotFoundError(f"{name} does not exist")


def found(value: Found | None, name: str) -> Found:
    """`value`, read from the store for the resource `name`; NOT_FOUND when it is None."""
    if value is None:
        raise not_found(name)
    return value


def agent_id(name: str) -> str:
    """`agents/x` (or bare `x`) → `x`."""
    value = name.removeprefix("agents/")
    if not AGENT_ID.match(value):
        raise BadNameError(f"agent name {name!r} must be 'agents/<id>' with id [a-z][a-z0-9-]*")
    return value


def thread_id(name: str) -> uuid.UUID:
    return uuid_name(name, "threads")


def run_id(name: str) -> uuid.UUID:
    return uuid_name(name, "runs")


def workflow_name(name: str) -> str:
    return name.removeprefix("workflows/")


def run_name(rid: uuid.UUID) -> str:
    return f"runs/{rid}"


def set_target(msg: Any, agent_id: str | None, workflow: str | None) -> None:
    """A run's or cron's `target` oneof from its row: `agents/{id}`, else `workflows/{name}`."""
    if agent_id:
        msg.agent = f"agents/{agent_id}"
    elif workflow:
        msg.workflow = f"workflows/{workflow}"


def _ts(target: Any, value: datetime | None) -> None:
    if value is not None:
        target.FromDatetime(value)


def agent_to_proto(row: AgentRow) -> agents_pb2.Agent:
    msg = agents_pb2.Agent(
        name=f"agents/{row.id}",
        display_name=row.display_name,
        description=row.description,
        system_prompt=row.system_prompt,
        model=row.model,
        temperature=row.temperature,
        max_tokens=row.max_tokens,
        retry_attempts=row.retry_attempts,
        context_sources=list(row.context_sources or []),
        tools=list(row.tools or []),
    )
    msg.timeout.CopyFrom(seconds_duration(row.timeout_seconds))
    _ts(msg.create_time, row.create_time)
    _ts(msg.update_time, row.update_time)
    return msg


def agent_snapshot(row: AgentRow) -> dict[str, Any]:
    """What a run keeps of its agent (so later edits do not change it)."""
    return {
        "name": f"agents/{row.id}",
        "display_name": row.display_name,
        "system_prompt": row.system_prompt,
        "model": row.model,
        "temperature": row.temperature,
        "max_tokens": row.max_tokens,
        "timeout_seconds": row.timeout_seconds,
        "retry_attempts": row.retry_attempts,
        "context_sources": list(row.context_sources or []),
        "tools": list(row.tools or []),
    }


THREAD_STATUS_TO_PROTO = {
    "idle": agents_pb2.THREAD_STATUS_IDLE,
    "busy": agents_pb2.THREAD_STATUS_BUSY,
    "interrupted": agents_pb2.THREAD_STATUS_INTERRUPTED,
    "error": agents_pb2.THREAD_STATUS_ERROR,
}


def thread_status(value: str) -> str:
    """ListThreads' `status` filter as the store's status ("" for none): `busy`, any case, or
    the enum's name (`THREAD_STATUS_BUSY`, what a Thread's `status` reads in JSON)."""
    wanted = value.strip().lower().removeprefix("thread_status_")
    if wanted and wanted not in THREAD_STATUS_TO_PROTO:
        allowed = ", ".join(THREAD_STATUS_TO_PROTO)
        raise InvalidArgumentError(f"status {value[:40]!r} is not one of: {allowed}")
    return wanted


def thread_to_proto(
    row: ThreadRow,
    run_count: int = 0,
    preview: str = "",
    status: str = "idle",
    latest_run: tuple[uuid.UUID, str] | None = None,
) -> agents_pb2.Thread:
    msg = agents_pb2.Thread(
        name=f"threads/{row.id}",
        run_count=run_count,
        preview=preview,
        status=THREAD_STATUS_TO_PROTO[status],
    )
    if latest_run:
        msg.latest_run.name = f"runs/{latest_run[0]}"
        msg.latest_run.status = STATUS_TO_PROTO[latest_run[1]]
    msg.metadata.SetInParent()  # `{}` when unset, as documents' metadata (QA s27 L9)
    msg.metadata.update(row.meta or {})
    _ts(msg.create_time, row.create_time)
    _ts(msg.update_time, row.update_time)
    return msg


STATUS_TO_PROTO = {
    RunState.QUEUED.value: agents_pb2.RUN_STATUS_QUEUED,
    RunState.RUNNING.value: agents_pb2.RUN_STATUS_RUNNING,
    RunState.PAUSED.value: agents_pb2.RUN_STATUS_PAUSED,
    RunState.COMPLETED.value: agents_pb2.RUN_STATUS_COMPLETED,
    RunState.FAILED.value: agents_pb2.RUN_STATUS_FAILED,
    RunState.CANCELLED.value: agents_pb2.RUN_STATUS_CANCELLED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}


def to_value(value: Any) -> struct_pb2.Value:
    msg = struct_pb2.Value()
    json_format.ParseDict(value, msg)
    return msg


# The largest a request's JSON field may be, serialized (protobuf bytes, as it came). A run's
# input (and what a client sends into a run: an answer, a fork's values) up to 1 MiB, so that
# pages of runs stay readable by gRPC clients with their default 4 MiB limit; a thread's metadata
# is a few labels. Unnamed fields have no limit of their own.
MIB = 1024 * 1024
JSON_LIMITS = {
    "run.input": MIB,
    "answer": MIB,
    "values": MIB,
    "thread.metadata": 64 * 1024,
}
# A List response holds the items that fit in this many bytes (at least one), and a
# next_page_token for the rest: under the 4 MiB a gRPC client accepts by default.
MAX_PAGE_BYTES = 3 * MIB


def size_text(size: int) -> str:
    """A byte count as a person reads a limit: '1 MiB', '64 KiB', '900 bytes'."""
    for unit, name in ((MIB, "MiB"), (1024, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


def check_size(size: int, field: str, limit: int) -> None:
    """InvalidArgumentError naming `field` and its limit when `size` (bytes) is over it."""
    if size > limit:
        raise InvalidArgumentError(
            f"{field} is {size} bytes serialized; at most {size_text(limit)} is accepted"
        )


# Levels of objects and arrays a request's JSON value may nest, the outermost counting as 1.
# Protobuf decodes at most 100 levels of messages, three per level of JSON in a Struct, and the
# service hands a value back wrapped deeper than it came (an event's data, a thread's state and
# history): an input of 32 levels was taken, then its thread's history failed INTERNAL and its
# `workflow.started` could not be decoded (QA s25; reads break from 32 levels: 7 to spare).
MAX_JSON_DEPTH = 24


def json_from(message: Message, field: str) -> Any:
    """A Struct or Value from a request as plain JSON values, refused (InvalidArgumentError) if it
    is over its JSON_LIMITS size, nested deeper than MAX_JSON_DEPTH, or holds NaN, Infinity or
    NUL characters, which neither JSON nor PostgreSQL can keep."""
    if field in JSON_LIMITS:
        check_size(message.ByteSize(), field, JSON_LIMITS[field])
    try:
        value = json_format.MessageToDict(message)
    except ValueError:
        raise InvalidArgumentError(f"{field} must not contain NaN or Infinity") from None
    depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise InvalidArgumentError(
            f"{field} is nested {depth} levels deep (objects and arrays); at most "
            f"{MAX_JSON_DEPTH} are accepted, so that every reply and event carrying it can be read"
        )
    check_json(value, field)
    return value


def json_depth(value: Any) -> int:
    """Levels of objects and arrays in `value` (0 for a scalar), walked without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            pending.extend((item, depth + 1) for item in node)
    return deepest


# google.protobuf.Duration's range: about ±10,000 years.
_MAX_DURATION_SECONDS = 315_576_000_000
# How long a run (each pick-up; time PAUSED does not count) may take, its own or its agent's
# timeout: at least a second, since a shorter one fails the run before its first node has begun
# ("took longer than 1e-09s"), and at most 7 days. Within that range the float seconds stored
# are within half a nanosecond of the Duration sent, so `seconds_duration` gives it back exactly.
TIMEOUT_RANGE = (1, 7 * 86_400)
# Durations a request field must fall in (seconds, inclusive); other fields take any valid one.
DURATION_RANGES = {"run.timeout": TIMEOUT_RANGE, "agent.timeout": TIMEOUT_RANGE}


def duration_seconds(duration: duration_pb2.Duration, field: str) -> float:
    """A request's Duration in seconds; InvalidArgumentError if it is not a valid one."""
    seconds, nanos = duration.seconds, duration.nanos
    if (
        abs(seconds) > _MAX_DURATION_SECONDS
        or abs(nanos) > 999_999_999
        or (seconds > 0 > nanos)
        or (seconds < 0 < nanos)
    ):
        raise InvalidArgumentError(
            f"{field} is not a valid duration (seconds within ±{_MAX_DURATION_SECONDS}, nanos "
            "within ±999999999 with the same sign)"
        )
    value = seconds + nanos / 1e9
    low, high = DURATION_RANGES.get(field, (-math.inf, math.inf))
    if not low <= value <= high:
        raise InvalidArgumentError(
            f"{field} {duration.ToJsonString()} is out of range: use {low:g}s to {high:g}s "
            f"({high / 86_400:g} days)"
        )
    return value


def seconds_duration(seconds: float) -> duration_pb2.Duration:
    """Seconds as stored (a float) as the Duration that was sent: the fraction rounded to the
    nearest nanosecond. Multiplying by 1e9 first rounded a large value to a float of 2**53
    nanoseconds at most (99999999999s came back as 99999999999.000002560s)."""
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)  # the subtraction is exact (Sterbenz)
    if nanos == 1_000_000_000:
        whole, nanos = whole + 1, 0
    return duration_pb2.Duration(seconds=int(whole), nanos=nanos)


def timestamp_seconds(timestamp: timestamp_pb2.Timestamp, field: str) -> float:
    """A request's Timestamp in seconds since the epoch; InvalidArgumentError if it is not a
    valid one (protobuf's own conversions raise ValueError: a 500 for the caller)."""
    problem = timestamp_problem(timestamp, field)
    if problem is not None:
        raise InvalidArgumentError(problem)
    return timestamp.seconds + timestamp.nanos / 1e9


def run_to_proto(row: RunRow) -> agents_pb2.Run:
    msg = agents_pb2.Run(
        name=run_name(row.id),
        thread=f"threads/{row.thread_id}",
        status=STATUS_TO_PROTO.get(row.status, agents_pb2.RUN_STATUS_UNSPECIFIED),
        error=row.error or "",
        attempt=row.attempt,
        webhook=row.webhook or "",
    )
    set_target(msg, row.agent_id, row.workflow)
    msg.input.update(row.input or {})
    if row.output is not None:
        msg.output.update(row.output)
    _ts(msg.create_time, row.create_time)
    _ts(msg.start_time, row.start_time)
    _ts(msg.end_time, row.end_time)
    if row.start_time and row.end_time:
        msg.duration.FromTimedelta(row.end_time - row.start_time)
    msg.usage.input_tokens = row.input_tokens or 0
    msg.usage.output_tokens = row.output_tokens or 0
    msg.usage.interrupted_input_tokens = row.interrupted_input_tokens or 0
    msg.usage.interrupted_output_tokens = row.interrupted_output_tokens or 0
    if row.interrupt and row.status == RunState.PAUSED.value:
        msg.interrupt.node = str(row.interrupt.get("node", ""))
        msg.interrupt.id = str(row.interrupt.get("id") or "")
        msg.interrupt.value.CopyFrom(to_value(row.interrupt.get("value")))
    if row.timeout_seconds:
        msg.timeout.CopyFrom(seconds_duration(row.timeout_seconds))
    msg.multitask_strategy = row.multitask_strategy or ""
    if row.queued_behind is not None and row.status == RunState.QUEUED.value:
        msg.queued_behind = run_name(row.queued_behind)
    return msg


M = TypeVar("M", bound=Message)
R = TypeVar("R")


def fitting(messages: Sequence[Message], budget: int = MAX_PAGE_BYTES) -> int:
    """How many of `messages`, from the first, a List response can hold in `budget` bytes — at
    least one, so a page always moves on (an item is never trimmed)."""
    total = 0
    for count, message in enumerate(messages):
        # A repeated field's item: its bytes plus a tag and a length prefix.
        total += message.ByteSize() + 6
        if total > budget and count:
            return count
    return len(messages)


class PageFit(Generic[R, M]):
    """One List page being built, for `pagination.page`'s `fit`: called with the rows read for
    the page, it converts them (once) and keeps in `messages` those that `fitting` lets in; the
    caller answers with `messages`. Make one per page: each call replaces `messages`."""

    def __init__(self, to_proto: Callable[[R], M], budget: int = MAX_PAGE_BYTES) -> None:
        self.to_proto = to_proto
        self.budget = budget
        self.messages: list[M] = []

    def __call__(self, rows: Sequence[R]) -> int:
        """How many of `rows` go in the page; `messages` becomes theirs."""
        messages = [self.to_proto(r) for r in rows]
        self.messages = messages[: fitting(messages, self.budget)]
        return len(self.messages)
