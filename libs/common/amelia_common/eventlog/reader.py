"""`EventReader`: the log from a start position, history then live, at the reader's own pace."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid
import weakref
from collections import deque
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


# What one pull asks JetStream for at most (its `max_bytes`; a single larger event comes alone):
# all a reader holds for a caller that stopped taking events. Counted in events alone (256), a
# replay of 120 KB events held 30 MB per stalled StreamEvents call, and 20 replays of 16 KB
# events asked for more than nats-server lets one connection have pending (64 MiB by default),
# so it cut the service's connection as a slow consumer, again at every reconnect.
BATCH_BYTES = 1024 * 1024
# At most this many bytes asked for by a process's catching-up readers and not yet received, on
# one NATS connection: half of nats-server's default `max_pending` (64 MiB), past which the
# server closes the connection as a slow consumer. A pull waits for room (bytes arrive fast:
# the wait is NATS's transfer time, never a slow caller's).
IN_FLIGHT_BYTES = 32 * 1024 * 1024
# A reservation outlives its pull by this much at most (the pull expires after PULL_EXPIRES):
# a pull lost with its connection gives its room back.
PULL_EXPIRES = 30.0
_RESERVATION_SECONDS = PULL_EXPIRES + 5.0
# JetStream's answer to a pull whose next message is larger than its `max_bytes`.
_MAX_BYTES_EXCEEDED = "Message Size Exceeds MaxBytes"
# What JetStream sends after the last message of a pull with `max_bytes` that got its whole
# batch: that pull was counted done already (taken for the end of the next one, it had the
# reader pull again with a batch still queued, and hold thousands of events).
_BATCH_COMPLETED = "Batch Completed"


class PullBudget:
    """The bytes one NATS connection's readers have asked for and not yet received
    (`IN_FLIGHT_BYTES` at most): keeps what nats-server holds for the process under its
    slow-consumer limit however many readers catch up at once."""

    def __init__(self, limit: int = IN_FLIGHT_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most ever reserved at once (at most `limit`)
        self.waited = 0  # pulls that waited for room
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, amount: int) -> int:
        """Reserve `amount` (at most the whole budget); waits while others hold it."""
        amount = min(amount, self.limit)
        if self.used and self.used + amount > self.limit:
            self.waited += 1
            loop = asyncio.get_running_loop()
            while self.used and self.used + amount > self.limit:
                waiter = loop.create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
        self.used += amount
        self.peak = max(self.peak, self.used)
        return amount

    def release(self, amount: int) -> None:
        self.used = max(0, self.used - amount)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


_budgets: weakref.WeakKeyDictionary[NATS, PullBudget] = weakref.WeakKeyDictionary()


def pull_budget(nc: NATS) -> PullBudget:
    """The budget of the readers on connection `nc` (one per connection: NATS's limit is)."""
    budget = _budgets.get(nc)
    if budget is None:
        budget = _budgets[nc] = PullBudget()
    return budget


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


def _caught_up(reply: str) -> bool:
    """Whether a JetStream delivery says nothing matching is pending behind it."""
    try:
        return delivery_info(reply)[2] == 0
    except (EventLogUnavailableError, ValueError):
        return False


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
    and `batch_bytes` at a time (the pull's `max_bytes`: JetStream sends no more; one event
    larger than that comes alone), and for the next batch only once the caller took the
    previous one, so what a reader holds stays under `batch_bytes` (or one event) however
    slowly the caller consumes, or if it never does: the backlog stays in the log. While behind,
    its pulls share the connection's `PullBudget`, so that the bytes in flight from NATS stay
    under nats-server's slow-consumer limit however many readers catch up at once.

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
        batch_bytes: int = BATCH_BYTES,
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
        self._pulled = 0  # events received for the current pull
        self._oversized = False  # the next event is larger than batch_bytes: pull it alone
        self._budget = pull_budget(nc)
        self._reserved = 0  # of the budget, for the pull in flight
        self._expect = 0  # messages of the pull in flight not yet received
        self._reservation_timer: asyncio.TimerHandle | None = None
        self._buffered_bytes = 0
        self.peak_buffered_bytes = 0  # the most `buffered_bytes` ever was (tests read it)
        self._start_sequence: int | None = None
        self._caught_up = False
        self._closed = False
        self._interrupted = False
        self._stop_task: asyncio.Task[None] | None = None
        self._last_batch_at = float("-inf")  # loop time `next_batch` last returned (with hold)

    # -- public surface ----------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Messages received from NATS and not yet returned to the caller (bounded by batch)."""
        return self._queue.qsize()

    @property
    def buffered_bytes(self) -> int:
        """The events' bytes received from NATS and not yet returned to the caller: at most
        `batch_bytes`, or one event larger than that."""
        return self._buffered_bytes

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
            self._buffered_bytes -= len(item.data)
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
            self._buffered_bytes -= len(item.data)
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

    def interrupt(self) -> None:
        """End the iteration at its next step, as `stop` does, for this reader alone: the
        caller's wait ends with `StopAsyncIteration` and the consumer is deleted.

        What a task reading it uses to end, rather than (or besides) being cancelled: on Python
        3.11 a cancellation that comes as a NATS request's reply arrives is lost
        (`asyncio.wait_for`, which nats-py's requests use, returns the reply instead), and a
        reader creating or deleting its consumer then reads on."""
        self._interrupted = True
        self._queue.put_nowait(_STOP)

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
        return self._interrupted or (self._stop is not None and self._stop.is_set())

    def _limit_reached(self) -> bool:
        return self.limit is not None and self.delivered >= self.limit

    async def _handle(self, msg: Msg) -> events_pb2.Event | None:
        status = msg.headers.get("Status") if msg.headers else None
        if status:
            if status == _HEARTBEAT:
                return None
            if status == _CONFLICT and (msg.headers or {}).get("Description") == _BATCH_COMPLETED:
                return None
            self._outstanding = 0
            if (
                status == _CONFLICT
                and self._pulled == 0
                and (msg.headers or {}).get("Description", "") == _MAX_BYTES_EXCEEDED
            ):
                self._oversized = True  # the next event alone is more than batch_bytes
            elif status == _NO_MESSAGES and not self.follow:
                self._caught_up = True
            elif status == _CONFLICT and "Consumer Deleted" in (msg.headers or {}).get(
                "Description", ""
            ):
                await self._reset("consumer deleted")
            elif status not in (_NO_MESSAGES, _REQUEST_TIMEOUT, _CONFLICT):
                await self._reset(f"status {status} {(msg.headers or {}).get('Description', '')}")
            return None
        self._outstanding -= 1
        self._pulled += 1
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
        return max(1, size)

    async def _pull(self) -> None:
        assert self._sub is not None and self._consumer is not None
        self._release()  # the previous pull's events are all received (and taken)
        if self._oversized:
            # An event larger than batch_bytes: JetStream refuses to send it within max_bytes,
            # so it is asked for alone (NATS's max_payload bounds it).
            self._oversized = False
            request: dict[str, Any] = {"batch": 1}
        else:
            request = {"batch": self._batch_size(), "max_bytes": self._batch_bytes}
        if self.follow:
            request["expires"] = int(PULL_EXPIRES * 1e9)
            request["idle_heartbeat"] = int(self._heartbeat * 1e9)
        else:
            request["no_wait"] = True
        if self.pending != 0:
            # Behind: the pull brings up to a batch at once. (At the live edge it brings what
            # is published meanwhile, as it comes: nothing to reserve.)
            await self._reserve(self._batch_bytes)
            if self._sub is None or self._consumer is None:  # closed or reset meanwhile
                self._release()
                return
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
        self._outstanding = self._expect = request["batch"]
        self._pulled = 0

    async def _reserve(self, amount: int) -> None:
        try:
            self._reserved = await self._budget.acquire(amount)
        except asyncio.CancelledError:
            self._release()
            raise
        self._reservation_timer = asyncio.get_running_loop().call_later(
            _RESERVATION_SECONDS, self._release
        )

    def _release(self) -> None:
        """Give the pull's reservation back: its events arrived, or it ended, or it is lost."""
        if self._reservation_timer is not None:
            self._reservation_timer.cancel()
            self._reservation_timer = None
        reserved, self._reserved = self._reserved, 0
        if reserved:
            self._budget.release(reserved)

    def _deliver_to(self, queue: asyncio.Queue[Any]) -> Callable[[Msg], Awaitable[None]]:
        """The subscription callback: messages to the reader's queue, in arrival order; the
        pull's reservation is given back once its last message (or its end) arrived."""

        async def deliver(msg: Msg) -> None:
            queue.put_nowait(msg)
            if queue is not self._queue:
                return  # a consumer since replaced
            self._buffered_bytes += len(msg.data)
            if self._buffered_bytes > self.peak_buffered_bytes:
                self.peak_buffered_bytes = self._buffered_bytes
            if self._reserved:
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is None:
                    self._expect -= 1
                    # The pull's last event, or the log's (the pull then waits at the live
                    # edge, for what is published, until it expires: nothing to reserve).
                    if self._expect <= 0 or _caught_up(msg.reply):
                        self._release()
                elif status != _HEARTBEAT and headers.get("Description") != _BATCH_COMPLETED:
                    self._release()

        return deliver

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
                self._buffered_bytes = 0
                self._sub = await self._nc.subscribe(inbox, cb=self._deliver_to(self._queue))
                self._consumer = name
                info = await self._js.add_consumer(self._stream, self._consumer_config(name))
                self.consumer_name = name
                self._outstanding = 0
                self.pending = info.num_pending
                if info.num_pending == 0:
                    self._caught_up = True
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
        self._release()
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if name is not None and self._nc.is_connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._js.delete_consumer(self._stream, name)


# --------------------------------------------------------------------------- publishing
