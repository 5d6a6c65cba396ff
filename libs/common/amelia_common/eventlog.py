"""The event log's client: how every service publishes to, subscribes to and reads the one stream.

Subject scheme (the only place it is defined; docs/events.md explains it):

    amelia.events.<collection>.<resource-id>.<type>

e.g. `amelia.events.runs.4f1c….run.token` for `subject="runs/4f1c…"`, `type="run.token"`.
Events without a subject use `_._`. Each message's payload is a serialized `amelia.v1.Event`
(without its sequence: JetStream assigns that), and its `Nats-Msg-Id` header is the event id,
so a retried publish is stored once within the dedup window.

Three things live here, so every service (and the events service itself) behaves the same:

- `EventLog.publish` / `publish_event`: stores an event and returns it with its sequence, only
  after JetStream acknowledged it. While NATS is unreachable a publish is retried (same id, so
  never stored twice) for `EVENTS_PUBLISH_TIMEOUT_SECONDS`, with at most `EVENTS_PUBLISH_BUFFER`
  publishes waiting at once; past either bound it raises `EventLogUnavailableError`. Nothing is
  dropped silently: `EventLog.stats` counts what waited, was retried and was refused, and the
  log says so too.
- `EventLog.read`: an `EventReader` over the log (filter + start position, history then live, or
  history only). It reads through an ephemeral JetStream pull consumer in small batches, asking
  for the next batch only when the caller consumed the previous one, so a slow reader costs a
  bounded amount of memory and reads the log at its own pace. It survives a NATS restart by
  recreating its consumer just after the last event it returned: no gap, no duplicate.
- `EventLog.subscribe` / `unsubscribe`: the seed's EventBus semantics on top of `read`: many
  handlers per type pattern, called in order for each event; one handler's exception is logged
  and never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from amelia.v1 import events_pb2
from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.eventlog")

SUBJECT_PREFIX = "amelia.events"
_TYPE_TOKEN = re.compile(r"^[a-z][a-z0-9_-]*$")
_RESOURCE = re.compile(r"^([a-z][a-z0-9-]*)/([A-Za-z0-9_-]+|\*)$")
_EVENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_TYPE_LENGTH = 128
MAX_SUBJECT_LENGTH = 256
MAX_SOURCE_LENGTH = 128
MAX_CORRELATION_ID_LENGTH = 128
MAX_TYPE_PATTERNS = 32


class InvalidEventError(ValueError):
    """An event, filter or pattern that cannot be stored or matched; the message says why."""


class EventLogUnavailableError(ConnectionError):
    """The log could not store (or read) an event in time: NATS is unreachable or overloaded.

    A publish that raised this was not acknowledged; retrying it with the same event id is safe
    (JetStream deduplicates by id within the dedup window).
    """


# --------------------------------------------------------------------------- subject scheme


def validate_type(event_type: str) -> None:
    tokens = event_type.split(".")
    if (
        len(event_type) > MAX_TYPE_LENGTH
        or len(tokens) < 2
        or not all(_TYPE_TOKEN.match(t) for t in tokens)
    ):
        raise InvalidEventError(
            f"event type {event_type!r} must be dotted lowercase words, e.g. 'run.token'"
        )


def subject_tokens(subject: str, *, allow_wildcard: bool = False) -> str:
    """`runs/abc` → `runs.abc`; empty → `_._`; `runs/*` → `runs.*` when allowed."""
    if not subject:
        return "_._"
    match = _RESOURCE.match(subject) if len(subject) <= MAX_SUBJECT_LENGTH else None
    if not match or (match.group(2) == "*" and not allow_wildcard):
        raise InvalidEventError(
            f"subject {subject!r} must look like 'collection/id' (e.g. 'runs/4f1c…')"
            + (" or 'collection/*'" if allow_wildcard else "")
        )
    return f"{match.group(1)}.{match.group(2)}"


def nats_subject(event_type: str, subject: str) -> str:
    """Where an event with this type and subject is stored."""
    validate_type(event_type)
    return f"{SUBJECT_PREFIX}.{subject_tokens(subject)}.{event_type}"


def type_pattern_tokens(pattern: str) -> str:
    """A user type pattern as NATS tokens: `run.*` (trailing) → `run.>`; `*` mid-way is one token."""
    tokens = pattern.split(".")
    if not pattern or any(not t for t in tokens):
        raise InvalidEventError(f"type pattern {pattern!r} has an empty token")
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        if token == ">" and not last:
            raise InvalidEventError(f"type pattern {pattern!r}: '>' may only be the last token")
        if token not in ("*", ">") and not _TYPE_TOKEN.match(token):
            raise InvalidEventError(
                f"type pattern {pattern!r}: token {token!r} must be a lowercase word, '*' or '>'"
            )
    if tokens[-1] == "*":
        tokens[-1] = ">"
    return ".".join(tokens)


def filter_subjects(types: list[str] | tuple[str, ...], subject: str) -> list[str]:
    """NATS filter subjects for an EventFilter (one per type pattern, overlaps removed).

    Overlapping filters (e.g. `run.*` and `run.token`) are refused by JetStream, so a pattern
    another pattern already covers is dropped; the result matches the same events.
    """
    if len(types) > MAX_TYPE_PATTERNS:
        raise InvalidEventError(f"at most {MAX_TYPE_PATTERNS} type patterns, got {len(types)}")
    resource = subject_tokens(subject, allow_wildcard=True) if subject else "*.*"
    patterns = {type_pattern_tokens(t) for t in types} or {">"}
    kept = [p for p in patterns if not any(o != p and _covers(o, p) for o in patterns)]
    return sorted(f"{SUBJECT_PREFIX}.{resource}.{p}" for p in kept)


def _covers(general: str, specific: str) -> bool:
    """True when every subject matching `specific` also matches `general` (NATS wildcards)."""
    g, s = general.split("."), specific.split(".")
    for i, token in enumerate(g):
        if token == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if token == "*":
            if s[i] == ">":
                return False
            continue
        if token != s[i]:
            return False
    return len(g) == len(s)


def stream_config(settings: Settings) -> api.StreamConfig:
    """The one stream every event lives in: file storage, limits from settings, dedup window."""
    return api.StreamConfig(
        name=settings.EVENTS_STREAM,
        subjects=[f"{SUBJECT_PREFIX}.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=settings.EVENTS_MAX_AGE_SECONDS or None,
        max_bytes=settings.EVENTS_MAX_BYTES,
        duplicate_window=settings.EVENTS_DEDUP_WINDOW_SECONDS,
        discard=api.DiscardPolicy.OLD,
    )


# --------------------------------------------------------------------------- envelope


def make_event(
    event_type: str,
    subject: str = "",
    data: Mapping[str, Any] | None = None,
    *,
    source: str,
    event_id: str | None = None,
    correlation_id: str = "",
) -> events_pb2.Event:
    """A new envelope with id and time filled in."""
    event = events_pb2.Event(
        id=event_id or uuid.uuid4().hex,
        type=event_type,
        source=source,
        subject=subject,
        correlation_id=correlation_id,
    )
    event.time.GetCurrentTime()
    if data:
        event.data.update(dict(data))
    return event


def validate_event(event: events_pb2.Event, max_bytes: int) -> bytes:
    """Check every field of an envelope about to be stored; returns its payload.

    Raises `InvalidEventError` naming the first problem.
    """
    validate_type(event.type)
    subject_tokens(event.subject)
    if not _EVENT_ID.match(event.id):
        raise InvalidEventError(
            f"event id {event.id!r} must be 1-128 characters of letters, digits, '.', '_', ':' "
            "or '-', starting with a letter or digit"
        )
    if len(event.source) > MAX_SOURCE_LENGTH:
        raise InvalidEventError(f"event source is longer than {MAX_SOURCE_LENGTH} characters")
    if len(event.correlation_id) > MAX_CORRELATION_ID_LENGTH:
        raise InvalidEventError(
            f"correlation_id is longer than {MAX_CORRELATION_ID_LENGTH} characters"
        )
    payload = event.SerializeToString()
    if len(payload) > max_bytes:
        raise InvalidEventError(
            f"event is {len(payload)} bytes once encoded; the limit is {max_bytes} "
            "(EVENTS_MAX_DATA_BYTES): store large payloads elsewhere and reference them"
        )
    return payload


def decode_event(payload: bytes, sequence: int) -> events_pb2.Event:
    """A stored message back into an Event with its stream sequence."""
    event = events_pb2.Event.FromString(payload)
    event.sequence = sequence
    return event


def event_data(event: events_pb2.Event) -> dict[str, Any]:
    """An event's data as plain Python."""
    return json_format.MessageToDict(event.data) if event.HasField("data") else {}


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class StartAt:
    """Where a reader starts. Exactly one of the fields decides; all empty means "only new"."""

    after_sequence: int | None = None
    time: dt.datetime | None = None
    from_beginning: bool = False

    @classmethod
    def new(cls) -> StartAt:
        return cls()

    @classmethod
    def beginning(cls) -> StartAt:
        return cls(from_beginning=True)

    @classmethod
    def after(cls, sequence: int) -> StartAt:
        if sequence < 0:
            raise InvalidEventError(f"after_sequence must be >= 0, got {sequence}")
        return cls(after_sequence=sequence)

    @classmethod
    def at_time(cls, when: dt.datetime) -> StartAt:
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return cls(time=when)


_STOP = object()


def _deliver_to(queue: asyncio.Queue[Any]) -> Callable[[Msg], Awaitable[None]]:
    """A subscription callback that hands messages to one reader's queue, in arrival order."""

    async def deliver(msg: Msg) -> None:
        queue.put_nowait(msg)

    return deliver


_HEARTBEAT = "100"
_NO_MESSAGES = "404"
_REQUEST_TIMEOUT = "408"
_CONFLICT = "409"


class EventReader:
    """Events from the log matching a filter, in sequence order, from a start position.

    Use as `async with log.read(...) as reader: async for event in reader: ...`. The reader owns
    one ephemeral JetStream pull consumer (ack none, in memory, deleted on close and by the
    server after `inactive_threshold` if this process dies). It asks for at most `batch` events
    at a time, and for the next batch only once the caller took the previous one, so memory per
    reader stays bounded by `batch_bytes` however slowly the caller consumes.

    `follow=False` ends once the reader caught up with the log (history only); `limit` ends after
    that many events. `stop` (an asyncio.Event) ends the iteration promptly when set. If the
    consumer or the connection is lost (a NATS restart), a new consumer starts right after
    `last_sequence`, so the caller sees neither a gap nor a duplicate. `retry_for` bounds how
    long (seconds) the reader keeps trying to reach NATS before raising
    `EventLogUnavailableError`; None means until stopped.
    """

    def __init__(
        self,
        event_log: EventLog,
        filters: list[str],
        start: StartAt,
        *,
        follow: bool = True,
        limit: int | None = None,
        stop: asyncio.Event | None = None,
        batch: int = 256,
        batch_bytes: int = 4 * 1024 * 1024,
        heartbeat: float = 1.0,
        retry_for: float | None = None,
        inactive_threshold: float = 60.0,
    ) -> None:
        self._log = event_log
        self._nc = event_log.nc
        # Short API timeouts: a reader waiting on NATS must still notice `stop` quickly.
        self._js = event_log.nc.jetstream(timeout=2.0)
        self.filters = filters
        self.start = start
        self.follow = follow
        self.limit = limit
        self._stop = stop
        self._max_batch = max(1, batch)
        self._batch_bytes = max(1, batch_bytes)
        self._heartbeat = heartbeat
        self._retry_for = retry_for
        self._inactive_threshold = inactive_threshold
        # Progress, readable by callers (and tests).
        self.last_sequence = 0
        self.delivered = 0
        self.pending: int | None = None  # matching events after last_sequence, per JetStream
        self.consumer_name: str | None = None
        self.resets = 0
        # Internal state.
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._outstanding = 0
        self._largest_message = 4096
        self._start_sequence: int | None = None
        self._caught_up = False
        self._closed = False
        self._stop_task: asyncio.Task[None] | None = None

    # -- public surface ----------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Messages received from NATS and not yet returned to the caller (bounded by batch)."""
        return self._queue.qsize()

    async def __aenter__(self) -> EventReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> EventReader:
        return self

    async def __anext__(self) -> events_pb2.Event:
        while True:
            if self._closed or self._stopped() or self._limit_reached():
                await self.aclose()
                raise StopAsyncIteration
            if self._sub is None:
                await self._open()
                continue
            if self._caught_up and not self.follow:
                await self.aclose()
                raise StopAsyncIteration
            if self._outstanding <= 0:
                await self._pull()
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout=self._heartbeat * 3)
                except TimeoutError:
                    await self._reset("no heartbeat from NATS")
                    continue
            if item is _STOP:
                continue
            event = await self._handle(item)
            if event is not None:
                return event

    async def open(self) -> None:
        """Create the consumer now rather than on the first `__anext__`.

        Once this returns, the start position is fixed: with "only new", every event published
        afterwards will be returned.
        """
        if self._sub is None and not self._closed:
            await self._open()

    async def aclose(self) -> None:
        """Delete the consumer and drop the inbox; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._stop_task is not None:
            self._stop_task.cancel()
        await self._drop_consumer()

    # -- internals ---------------------------------------------------------------------------

    def _stopped(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _limit_reached(self) -> bool:
        return self.limit is not None and self.delivered >= self.limit

    async def _handle(self, msg: Msg) -> events_pb2.Event | None:
        status = msg.headers.get("Status") if msg.headers else None
        if status:
            if status == _HEARTBEAT:
                return None
            self._outstanding = 0
            if status == _NO_MESSAGES and not self.follow:
                self._caught_up = True
            elif status == _CONFLICT and "Consumer Deleted" in (msg.headers or {}).get(
                "Description", ""
            ):
                await self._reset("consumer deleted")
            elif status not in (_NO_MESSAGES, _REQUEST_TIMEOUT, _CONFLICT):
                await self._reset(f"status {status} {(msg.headers or {}).get('Description', '')}")
            return None
        self._outstanding -= 1
        self._largest_message = max(self._largest_message, len(msg.data))
        meta = msg.metadata
        sequence = meta.sequence.stream
        self.pending = meta.num_pending
        if meta.num_pending == 0:
            self._caught_up = True
        if sequence <= self.last_sequence:
            return None  # already returned before a consumer reset
        self.last_sequence = sequence
        try:
            event = decode_event(msg.data, sequence)
        except DecodeError:
            log.warning("skipping a message that is not an Event", sequence=sequence)
            return None
        self.delivered += 1
        return event

    def _batch_size(self) -> int:
        size = self._max_batch
        if self.limit is not None:
            size = min(size, self.limit - self.delivered)
        return max(1, min(size, self._batch_bytes // max(self._largest_message, 1)))

    async def _pull(self) -> None:
        assert self._sub is not None and self.consumer_name is not None
        batch = self._batch_size()
        request: dict[str, Any] = {"batch": batch}
        if self.follow:
            request["expires"] = int(30 * 1e9)
            request["idle_heartbeat"] = int(self._heartbeat * 1e9)
        else:
            request["no_wait"] = True
        stream = self._log.settings.EVENTS_STREAM
        try:
            await self._nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{self.consumer_name}",
                json.dumps(request).encode(),
                reply=self._sub.subject,
            )
        except nats.errors.Error as exc:
            await self._reset(f"cannot request events: {exc!r}")
            return
        self._outstanding = batch

    def _consumer_config(self, name: str) -> api.ConsumerConfig:
        config = api.ConsumerConfig(
            name=name,
            ack_policy=api.AckPolicy.NONE,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=self._inactive_threshold,
            max_waiting=4,
        )
        if len(self.filters) == 1:
            config.filter_subject = self.filters[0]
        else:
            config.filter_subjects = list(self.filters)
        if self.last_sequence or self._start_sequence is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(self.last_sequence + 1, self._start_sequence or 1)
        elif self.start.time is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = self.start.time
        else:
            config.deliver_policy = api.DeliverPolicy.ALL
        return config

    async def _resolve_start(self) -> None:
        """Turn "only new" and "after N" into a first sequence, once, so a reset keeps it."""
        if self._start_sequence is not None or self.start.time is not None:
            return
        if self.start.after_sequence is not None:
            self._start_sequence = self.start.after_sequence + 1
        elif self.start.from_beginning:
            self._start_sequence = 1
        else:
            info = await self._js.stream_info(self._log.settings.EVENTS_STREAM)
            self._start_sequence = info.state.last_seq + 1

    async def _open(self) -> None:
        """Create the consumer and inbox, retrying while NATS is away."""
        deadline = None if self._retry_for is None else time.monotonic() + self._retry_for
        delay = 0.1
        while not self._stopped():
            try:
                await self._resolve_start()
                name = f"amelia-read-{uuid.uuid4().hex}"
                inbox = self._nc.new_inbox()
                self._queue = asyncio.Queue()
                self._sub = await self._nc.subscribe(inbox, cb=_deliver_to(self._queue))
                self.consumer_name = name
                info = await self._js.add_consumer(
                    self._log.settings.EVENTS_STREAM, self._consumer_config(name)
                )
                self._outstanding = 0
                if info.num_pending == 0:
                    self._caught_up = True
                    self.pending = 0
                if self._stop is not None and self._stop_task is None:
                    self._stop_task = asyncio.create_task(self._watch_stop(self._stop))
                return
            except nats.js.errors.BadRequestError as exc:
                await self._drop_consumer()
                raise EventLogUnavailableError(
                    f"JetStream refused to create a reader for {self.filters}: {exc}"
                ) from exc
            except Exception as exc:
                await self._drop_consumer()
                if deadline is not None and time.monotonic() >= deadline:
                    raise EventLogUnavailableError(
                        f"cannot read the event log: NATS JetStream did not answer ({exc!r})"
                    ) from exc
                log.warning("event reader waiting for NATS", error=repr(exc))
                await self._sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _watch_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._queue.put_nowait(_STOP)

    async def _sleep(self, seconds: float) -> None:
        if self._stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _reset(self, why: str) -> None:
        """Forget the consumer; the next `__anext__` recreates it after `last_sequence`."""
        self.resets += 1
        log.info("event reader reconnecting", reason=why, after_sequence=self.last_sequence)
        await self._drop_consumer()

    async def _drop_consumer(self) -> None:
        sub, self._sub = self._sub, None
        name, self.consumer_name = self.consumer_name, None
        self._outstanding = 0
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if name is not None and self._nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._js.delete_consumer(self._log.settings.EVENTS_STREAM, name),
                    timeout=2.0,
                )


# --------------------------------------------------------------------------- publishing


@dataclass
class PublishStats:
    """What publishing did, for logs and metrics. `waiting` is the current buffer use."""

    published: int = 0
    waiting: int = 0
    waiting_peak: int = 0
    retried: int = 0
    refused: int = 0
    handler_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# Errors worth retrying: the connection is down or reconnecting, or JetStream is not answering.
_TRANSIENT = (
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
)

Handler = Callable[[events_pb2.Event], Awaitable[None] | None]


def _report_dispatch_end(task: asyncio.Task[None]) -> None:
    """A subscription that ends on its own (not by unsubscribe/close) must not end silently."""
    if not task.cancelled() and task.exception() is not None:
        log.error("event subscription stopped", task=task.get_name(), error=repr(task.exception()))


@dataclass
class _Dispatcher:
    handlers: list[Handler] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    reader: EventReader | None = None


class EventLog:
    """Publishes events to the stream, reads them back, and dispatches them to handlers."""

    def __init__(self, nc: NATS, settings: Settings, source: str) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=settings.EVENTS_PUBLISH_TIMEOUT_SECONDS)
        self.settings = settings
        self.source = source
        self.stats = PublishStats()
        self._dispatchers: dict[tuple[str, str], _Dispatcher] = {}
        self._last_outage_log = 0.0

    async def ensure_stream(self) -> None:
        """Create the stream, or bring its limits in line with settings."""
        config = stream_config(self.settings)
        try:
            await self.js.stream_info(config.name or "")
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(config)
        else:
            await self.js.update_stream(config)

    # -- publish -----------------------------------------------------------------------------

    async def publish_event(self, event: events_pb2.Event) -> events_pb2.Event:
        """Store `event`; returns it with its sequence once JetStream acknowledged it.

        Raises `InvalidEventError` for a bad envelope and `EventLogUnavailableError` when the
        event could not be stored within EVENTS_PUBLISH_TIMEOUT_SECONDS or the publish buffer
        (EVENTS_PUBLISH_BUFFER publishes waiting at once) is full.
        """
        if not event.id:
            event.id = uuid.uuid4().hex
        if not event.HasField("time"):
            event.time.GetCurrentTime()
        if not event.source:
            event.source = self.source
        event.sequence = 0
        payload = validate_event(event, self.settings.EVENTS_MAX_DATA_BYTES)
        subject = nats_subject(event.type, event.subject)
        if self.stats.waiting >= self.settings.EVENTS_PUBLISH_BUFFER:
            self.stats.refused += 1
            log.error(
                "event refused: publish buffer full",
                event_type=event.type,
                waiting=self.stats.waiting,
                refused_total=self.stats.refused,
            )
            raise EventLogUnavailableError(
                f"event {event.id} ({event.type}) not stored: {self.stats.waiting} publishes are "
                f"already waiting for NATS JetStream to come back (EVENTS_PUBLISH_BUFFER="
                f"{self.settings.EVENTS_PUBLISH_BUFFER})"
            )
        self.stats.waiting += 1
        self.stats.waiting_peak = max(self.stats.waiting_peak, self.stats.waiting)
        try:
            ack = await self._publish_with_retry(event, subject, payload)
        finally:
            self.stats.waiting -= 1
        self.stats.published += 1
        stored = events_pb2.Event()
        stored.CopyFrom(event)
        stored.sequence = ack.seq
        return stored

    async def _publish_with_retry(
        self, event: events_pb2.Event, subject: str, payload: bytes
    ) -> api.PubAck:
        budget = self.settings.EVENTS_PUBLISH_TIMEOUT_SECONDS
        deadline = time.monotonic() + budget
        # Several attempts fit in the budget: a request lost in a dying connection is resent
        # on the next one (same id, so JetStream stores it once).
        attempt = max(0.2, min(2.0, budget / 4))
        delay = 0.05
        sent = False  # handed to a live connection at least once: it may have been stored
        while True:
            remaining = deadline - time.monotonic()
            if not self.nc.is_connected:
                # Wait for the connection here rather than in nats-py's reconnect buffer, so an
                # event that never left this process is known not to be stored.
                if remaining <= 0 or self.nc.is_closed:
                    raise self._refuse(event, budget, sent, "NATS is unreachable")
                self.stats.retried += 1
                self._note_outage("disconnected")
                await asyncio.sleep(min(0.05, remaining))
                continue
            try:
                sent = True
                return await self.js.publish(
                    subject,
                    payload,
                    timeout=max(0.05, min(remaining, attempt)),
                    stream=self.settings.EVENTS_STREAM,
                    headers={"Nats-Msg-Id": event.id},
                )
            except nats.errors.MaxPayloadError as exc:
                raise InvalidEventError(
                    f"event is {len(payload)} bytes: larger than NATS accepts ({exc})"
                ) from exc
            except _TRANSIENT as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.nc.is_closed:
                    raise self._refuse(event, budget, sent, type(exc).__name__) from exc
                self.stats.retried += 1
                self._note_outage(repr(exc))
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                self._refuse(event, budget, sent, str(exc))
                raise EventLogUnavailableError(
                    f"event {event.id} ({event.type}) not stored: NATS JetStream refused it ({exc})"
                ) from exc

    def _refuse(
        self, event: events_pb2.Event, budget: float, sent: bool, why: str
    ) -> EventLogUnavailableError:
        """Count and log a publish that failed; returns the error to raise."""
        self.stats.refused += 1
        log.error(
            "event not stored",
            event_id=event.id,
            event_type=event.type,
            error=why,
            refused_total=self.stats.refused,
            waiting=self.stats.waiting,
        )
        if sent:
            return EventLogUnavailableError(
                f"event {event.id} ({event.type}) was not acknowledged by NATS JetStream within "
                f"{budget:g}s ({why}), so it may or may not be stored; publish it again with the "
                "same id (it is stored once)"
            )
        return EventLogUnavailableError(
            f"event {event.id} ({event.type}) not stored: {why} for {budget:g}s "
            "(EVENTS_PUBLISH_TIMEOUT_SECONDS)"
        )

    def _note_outage(self, why: str) -> None:
        now = time.monotonic()
        if now - self._last_outage_log >= 1.0:
            self._last_outage_log = now
            log.warning(
                "event log unreachable: publishes waiting",
                error=why,
                waiting=self.stats.waiting,
                retried_total=self.stats.retried,
            )

    async def publish(
        self,
        event_type: str,
        subject: str = "",
        data: Mapping[str, Any] | None = None,
        *,
        event_id: str | None = None,
        correlation_id: str = "",
    ) -> events_pb2.Event:
        """Build and store an event from this service."""
        event = make_event(
            event_type,
            subject,
            data,
            source=self.source,
            event_id=event_id,
            correlation_id=correlation_id,
        )
        return await self.publish_event(event)

    # -- read --------------------------------------------------------------------------------

    def read(
        self,
        types: list[str] | tuple[str, ...] = (),
        subject: str = "",
        start: StartAt | None = None,
        **options: Any,
    ) -> EventReader:
        """An `EventReader` over matching events; see its docstring for `options`.

        Raises `InvalidEventError` for a bad filter before touching NATS.
        """
        return EventReader(self, filter_subjects(types, subject), start or StartAt.new(), **options)

    async def get(self, sequence: int) -> events_pb2.Event | None:
        """The event stored at `sequence`, or None when there is none (or it expired)."""
        try:
            msg = await self.js.get_msg(self.settings.EVENTS_STREAM, sequence)
        except nats.js.errors.NotFoundError:
            return None
        if not msg.subject or not msg.subject.startswith(SUBJECT_PREFIX + ".") or not msg.data:
            return None
        return decode_event(msg.data, sequence)

    # -- subscribe (the seed's EventBus) -------------------------------------------------------

    async def subscribe(self, type_pattern: str, handler: Handler, *, subject: str = "") -> None:
        """Call `handler(event)` for every event matching the pattern published from now on.

        Returns once the subscription is live: an event published after this returns is
        delivered. Handlers for one pattern run in order, one event at a time; an exception in
        one is logged (and counted in `stats.handler_errors`) and the others still run.
        """
        key = (type_pattern, subject)
        dispatcher = self._dispatchers.get(key)
        if dispatcher is not None:
            dispatcher.handlers.append(handler)
            return
        reader = self.read([type_pattern], subject)
        dispatcher = _Dispatcher(handlers=[handler], reader=reader)
        self._dispatchers[key] = dispatcher
        await reader.open()
        dispatcher.task = asyncio.create_task(
            self._dispatch(dispatcher), name=f"eventlog-subscribe-{type_pattern}"
        )
        dispatcher.task.add_done_callback(_report_dispatch_end)

    def unsubscribe(self, type_pattern: str, handler: Handler, *, subject: str = "") -> None:
        """Stop calling `handler`; the last handler's removal closes the subscription."""
        key = (type_pattern, subject)
        dispatcher = self._dispatchers.get(key)
        if dispatcher is None or handler not in dispatcher.handlers:
            return
        dispatcher.handlers.remove(handler)
        if not dispatcher.handlers:
            del self._dispatchers[key]
            if dispatcher.task is not None:
                dispatcher.task.cancel()

    async def _dispatch(self, dispatcher: _Dispatcher) -> None:
        assert dispatcher.reader is not None
        async with dispatcher.reader as reader:
            async for event in reader:
                for handler in list(dispatcher.handlers):
                    try:
                        result = handler(event)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:
                        self.stats.handler_errors += 1
                        log.exception(
                            "event handler failed",
                            event_type=event.type,
                            sequence=event.sequence,
                            handler=getattr(handler, "__qualname__", repr(handler)),
                        )

    async def close(self) -> None:
        """Stop every subscription (their consumers are deleted)."""
        dispatchers = list(self._dispatchers.values())
        self._dispatchers.clear()
        for dispatcher in dispatchers:
            if dispatcher.task is not None:
                dispatcher.task.cancel()
        for dispatcher in dispatchers:
            if dispatcher.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await dispatcher.task
