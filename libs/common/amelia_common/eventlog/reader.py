"""`EventReader`: the log from a start position, history then live, at the reader's own pace."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from amelia.v1 import events_pb2
from amelia_common.event_names import InvalidEventError
from amelia_common.eventlog.envelope import (
    EPOCH,
    LAST_TIME,
    MAX_SEQUENCE,
    EventLogUnavailableError,
    TooManyReadersError,
    decode_event,
)
from amelia_common.logging import get_logger

log = get_logger("amelia.eventlog")


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
        if not 0 <= sequence <= MAX_SEQUENCE:
            raise InvalidEventError(
                f"after_sequence must be between 0 and {MAX_SEQUENCE}, got {sequence}"
            )
        return cls(after_sequence=sequence)

    @classmethod
    def at_time(cls, when: dt.datetime) -> StartAt:
        """Events stored at or after `when` (any datetime: before 1970 means from the beginning,
        a time after JetStream's last representable one, 2262-04-11, matches nothing yet)."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return cls(time=when)


_STOP = object()
# At most what the `sequence` field adds to a stored event's bytes (a tag and a 64-bit varint).
_SEQUENCE_FIELD_BYTES = 11
# Message timestamps reach us as float seconds (microsecond rounding): never skip an event
# JetStream placed at or after a start time because of that rounding.
_CLOCK_SLACK = dt.timedelta(milliseconds=1)


def _deliver_to(queue: asyncio.Queue[Any]) -> Callable[[Msg], Awaitable[None]]:
    """A subscription callback that hands messages to one reader's queue, in arrival order."""

    async def deliver(msg: Msg) -> None:
        queue.put_nowait(msg)

    return deliver


def delivery_info(reply: str) -> tuple[int, int, int]:
    """(stream sequence, time stored in ns, pending) of a JetStream message, from its reply
    subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>`, or with
    `<domain>.<account hash>.` after `$JS.ACK.` and a random token at the end (servers >= 2.9).

    Read straight from the tokens: nats-py's `msg.metadata` builds three objects and a datetime
    per message, a quarter of a reader's time per event."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[7]), int(tokens[8])
    if len(tokens) >= 11 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[7]), int(tokens[9]), int(tokens[10])
    raise EventLogUnavailableError(f"not a JetStream delivery: reply subject {reply[:200]!r}")


def _stored_at(nanoseconds: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=nanoseconds // 1000)


# JetStream's "maximum consumers limit reached" (the stream's `max_consumers` or the account's).
_MAX_CONSUMERS = 10026

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
        nc: NATS,
        stream: str,
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
        self._stream = stream
        self._nc = nc
        # Short API timeouts: a reader waiting on NATS must still notice `stop` quickly.
        self._js = nc.jetstream(timeout=2.0)
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
        # The JetStream consumer's name once it exists (None while it is being created).
        self.consumer_name: str | None = None
        self.resets = 0
        # Internal state.
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._sub: Subscription | None = None
        # The consumer being created or in use: deleted on close even if its creation timed out.
        self._consumer: str | None = None
        self._outstanding = 0
        self._largest_message = 4096
        self._start_sequence: int | None = None
        self._caught_up = False
        self._closed = False
        self._stop_task: asyncio.Task[None] | None = None
        self._last_batch_at = float("-inf")  # loop time `next_batch` last returned (with hold)

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
                    # Not `asyncio.wait_for`: on Python 3.11 it swallows a cancellation that
                    # comes just as the item arrives, and the cancelled read waits on.
                    async with asyncio.timeout(self._heartbeat * 3):
                        item = await self._queue.get()
                except TimeoutError:
                    await self._reset("no heartbeat from NATS")
                    continue
            if item is _STOP:
                continue
            event = await self._handle(item)
            if event is not None:
                return event

    async def next_batch(
        self, limit: int, max_bytes: int, hold: float = 0.0
    ) -> list[events_pb2.Event]:
        """The next event and those received behind it, in order: at most `limit`, and no more
        once they add up to `max_bytes` encoded (so at most `max_bytes` plus one event; a single
        event always comes, whatever its size).

        Waits for the first one, like `__anext__` (raising `StopAsyncIteration` at the end).
        With `hold` (seconds), at the live edge (nothing stored behind the first event), while
        events keep arriving faster than the caller takes them (another one was already
        delivered behind the first), a batch that would start less than `hold` after the
        previous one was returned waits until `hold` has passed since it, taking what NATS
        delivers meanwhile: fewer, fuller batches when the caller falls behind (each batch is
        a gRPC message for StreamEvents, ~100-200 us of CPU whatever it carries), and no event
        waits longer than `hold` for it. An event with nothing behind it is returned at once,
        so a reader that keeps up never waits, and neither does one catching up (more is
        already on its way). Memory stays bounded: NATS delivers at most one pull's batch
        into the queue.
        """
        batch = [await self.__anext__()]
        if hold > 0 and self.pending == 0 and 0 < self._queue.qsize() < limit - 1:
            loop = asyncio.get_running_loop()
            wait = self._last_batch_at + hold - loop.time()
            if wait > 0 and not (self._closed or self._stopped()):
                await asyncio.sleep(min(wait, hold))
        size = batch[0].ByteSize()
        while len(batch) < limit and size < max_bytes and self._sub is not None:
            if self._closed or self._stopped() or self._limit_reached():
                break
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if item is _STOP:
                break
            event = await self._handle(item)
            if event is not None:
                batch.append(event)
                # The stored bytes plus the sequence field: what the event encodes to, without
                # `ByteSize()`'s walk of it (a third of decoding it again).
                size += len(item.data) + _SEQUENCE_FIELD_BYTES
        if hold > 0:
            self._last_batch_at = asyncio.get_running_loop().time()
        return batch

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
        sequence, stored_ns, pending = delivery_info(msg.reply)
        self.pending = pending
        if pending == 0:
            self._caught_up = True
        if sequence <= self.last_sequence:
            return None  # already returned before a consumer reset
        self.last_sequence = sequence
        if self.start.time is not None and _stored_at(stored_ns) + _CLOCK_SLACK < self.start.time:
            # A start time in the future (or past what JetStream can represent): JetStream
            # delivers what arrives from now on, but these were stored before the start.
            return None
        self.delivered += 1
        return decode_event(msg.data, sequence, msg.subject)

    def _batch_size(self) -> int:
        size = self._max_batch
        if self.limit is not None:
            size = min(size, self.limit - self.delivered)
        return max(1, min(size, self._batch_bytes // max(self._largest_message, 1)))

    async def _pull(self) -> None:
        assert self._sub is not None and self._consumer is not None
        batch = self._batch_size()
        request: dict[str, Any] = {"batch": batch}
        if self.follow:
            request["expires"] = int(30 * 1e9)
            request["idle_heartbeat"] = int(self._heartbeat * 1e9)
        else:
            request["no_wait"] = True
        stream = self._stream
        try:
            await self._nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{self._consumer}",
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
        elif self.start.time is not None and self.start.time > EPOCH:
            # JetStream keeps int64 nanoseconds: a later time would overflow into the past and
            # replay the whole log. The last representable time matches the same (nothing yet).
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = min(self.start.time, LAST_TIME)
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
            info = await self._js.stream_info(self._stream)
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
                self._consumer = name
                info = await self._js.add_consumer(self._stream, self._consumer_config(name))
                self.consumer_name = name
                self._outstanding = 0
                if info.num_pending == 0:
                    self._caught_up = True
                    self.pending = 0
                if self._stop is not None and self._stop_task is None:
                    self._stop_task = asyncio.create_task(self._watch_stop(self._stop))
                return
            except nats.js.errors.BadRequestError as exc:
                await self._drop_consumer()
                if exc.err_code == _MAX_CONSUMERS:
                    raise TooManyReadersError(
                        f"too many open subscriptions on the event log: stream {self._stream} "
                        "already has as many JetStream consumers as NATS allows "
                        f"({exc.description}); each open StreamEvents call or subscription "
                        "(those on one filter at the live edge share one) and each ListEvents "
                        "page being read holds one: close some and try again"
                    ) from exc
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
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _reset(self, why: str) -> None:
        """Forget the consumer; the next `__anext__` recreates it after `last_sequence`."""
        self.resets += 1
        log.info("event reader reconnecting", reason=why, after_sequence=self.last_sequence)
        await self._drop_consumer()

    async def _drop_consumer(self) -> None:
        sub, self._sub = self._sub, None
        name, self._consumer, self.consumer_name = self._consumer, None, None
        self._outstanding = 0
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if name is not None and self._nc.is_connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._js.delete_consumer(self._stream, name)


# --------------------------------------------------------------------------- publishing
