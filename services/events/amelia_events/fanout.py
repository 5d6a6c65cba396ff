"""Live StreamEvents calls with the same filter share one JetStream consumer (`Tap`).

With a consumer of its own per call, the service pulled, parsed, decoded, checked and serialized
every event once per call: 100 calls on one filter got 123 events/s each with the service at
87% CPU (docs/performance.md, session 12), where NATS fans out at no cost to us. Here the calls
on a filter that are at the live edge share a tap: one `EventReader` whose events are decoded,
checked and serialized once (`Item`), then queued, the same bytes, for each call. Each call
keeps every promise a reader of its own gave it:

- gap-free and in order: a call joins a tap only where the tap goes on exactly after the call's
  last sequence (the tap keeps its recent events for that); until then it reads on a reader of
  its own, as before, and joins once that reader has caught up with the log;
- a slow client stalls no one, and memory stays bounded: a call's queue holds at most
  QUEUE_EVENTS / QUEUE_BYTES. A call that falls that far behind leaves the tap (the tap and the
  other calls never wait for it), sends what it had queued and goes on from there on a reader
  of its own, paced by HTTP/2 flow control (its backlog stays in the log, as before), until it
  catches up and joins again. It is not cut: no client, old or new, has to handle a new error;
- filters exact: calls share a tap only when their NATS filter subjects are the same set;
- NATS restarts: the tap's reader recreates its consumer after its last sequence, like any
  reader, and its calls see neither a gap nor a duplicate.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from amelia.v1 import events_pb2
from amelia_common.eventlog import EventLog, EventReader, StartAt, filter_subjects
from amelia_common.logging import get_logger

log = get_logger("amelia.events.fanout")

# What a call may have queued and not yet handed to gRPC before it leaves its tap.
QUEUE_EVENTS = 4096
QUEUE_BYTES = 2 * 1024 * 1024
# A tap's most recent events, kept so that a call can join exactly after its last sequence.
# Well under the queue's bounds: a call that joins never starts over them.
RECENT_EVENTS = 512
RECENT_BYTES = 1024 * 1024
# What the recent events of all of a process's taps hold together: each tap keeps at most its
# share (RECENT_BYTES at most, RECENT_MIN_BYTES at least), so 1,000 filters hold 64 MiB, not
# 1 GiB (QA s26 F4: 200 stalled calls on distinct subjects, 200 taps). A smaller share only
# means that a call resuming further behind reads on a reader of its own before it joins.
HUB_RECENT_BYTES = 64 * 1024 * 1024
RECENT_MIN_BYTES = 64 * 1024
# Events a tap takes from its reader at a time.
TAP_BATCH = 256
# A batched call sharing its tap sends a message at most this often per other call on the tap
# (at most SHARED_HOLD_MAX): each gRPC message costs the service's one thread ~100-200 us
# whatever it carries, so n calls each sending as events come would saturate it (see `Tap.hold`).
SHARED_HOLD_PER_CALL = 0.0002
SHARED_HOLD_MAX = 0.020


def _tag(field: str) -> bytes:
    """The key of StreamEventsResponse's length-delimited `field` (one byte: numbers < 16)."""
    number = events_pb2.StreamEventsResponse.DESCRIPTOR.fields_by_name[field].number
    return bytes([number << 3 | 2])


_EVENT_TAG = _tag("event")
_EVENTS_TAG = _tag("events")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _single(event: events_pb2.Event) -> bytes:
    """A one-event `StreamEventsResponse`, serialized."""
    encoded = event.SerializeToString()
    return b"".join((_EVENT_TAG, _varint(len(encoded)), encoded))


@dataclass(frozen=True, slots=True)
class Item:
    """One event serialized once, for every call: its part of a batched `StreamEventsResponse`
    (`piece`: a message's `events` are its items' pieces one after the other, as protobuf
    encodes a repeated field). A one-event message (`single`) differs in its first byte only,
    the field's key, and is made when sent: kept beside the piece, every event a tap kept
    cost twice its size (QA s26 F4: 200 taps held 400 MB)."""

    sequence: int
    piece: bytes

    @property
    def single(self) -> bytes:
        return b"".join((_EVENT_TAG, memoryview(self.piece)[1:]))

    @classmethod
    def of(cls, event: events_pb2.Event) -> Item:
        encoded = event.SerializeToString()
        return cls(event.sequence, b"".join((_EVENTS_TAG, _varint(len(encoded)), encoded)))


class Tap:
    """One reader at the live edge of a filter, its events offered to every joined call."""

    def __init__(self, hub: Hub, key: tuple[str, ...], reader: EventReader, after: int) -> None:
        self.hub = hub
        self.key = key
        self.reader = reader
        self.calls: set[Call] = set()
        self.recent: collections.deque[Item] = collections.deque()
        self.recent_bytes = 0
        # Every matching event after this sequence is in `recent` or was offered after it.
        self.recent_after = after
        self.ended = False
        self.error: Exception | None = None
        self.task = asyncio.create_task(self._pump())

    def serves(self, after: int) -> bool:
        """Whether a call whose last sequence is `after` can join now without a gap: the tap
        still has what came after it, and reads the log (its consumer exists)."""
        return (
            not self.ended
            and after >= self.recent_after
            and self.reader.consumer_name is not None
            and self.hub.event_log.nc.is_connected
        )

    def hold(self) -> float:
        """How long after its previous message a batched call on this tap waits before the
        next, gathering what arrives meanwhile: none for a call alone on its tap (it sends as
        events come), up to SHARED_HOLD_MAX with many (about the time the service needs to
        send one message to each of the others anyway)."""
        return min(SHARED_HOLD_MAX, SHARED_HOLD_PER_CALL * (len(self.calls) - 1))

    def join(self, call: Call, after: int) -> None:
        call.attach(self, [item for item in self.recent if item.sequence > after])
        self.calls.add(call)

    async def leave(self, call: Call) -> None:
        self.calls.discard(call)
        if not self.calls:
            await self.close()

    async def close(self) -> None:
        """End the pump and wait for it (its reader closed, its consumer deleted).

        The reader is told to stop, not only the pump cancelled: a cancellation that arrives
        just as one of the reader's NATS requests gets its reply is lost on Python 3.11 (nats-py
        waits with `asyncio.wait_for`, which returns the reply), and the pump read on, on a
        consumer of its own, for nobody, while this waited for it: the StreamEvents call whose
        end closed the tap never ended (docs/events.md, "Flow control")."""
        self.ended = True
        self.hub.forget(self)
        self.reader.interrupt()
        if not self.task.done():
            self.task.cancel()
        await asyncio.wait({self.task})

    async def _pump(self) -> None:
        try:
            while self._offer(await self.reader.next_batch(TAP_BATCH, 1024 * 1024)):
                pass
        except StopAsyncIteration:  # the service is stopping, or the tap was closed
            pass
        except Exception as exc:  # noqa: BLE001 - handed to the calls, which raise it
            self.error = exc
        finally:
            self.ended = True
            self.hub.forget(self)
            for call in self.calls:
                call.wake.set()
            # Let go of the events now: the tap itself may stay alive for a while, in a cycle
            # through its cancelled task's traceback, until Python's cycle collector runs.
            self.recent.clear()
            self.recent_bytes = 0
            await self.reader.aclose()

    def _offer(self, events: list[events_pb2.Event]) -> bool:
        """Offer the reader's next events to every call; False once every call left (fell
        behind). (Not in `_pump` itself: its frame would keep the last batch alive while it
        waits for the next, and after it ended.)"""
        items = [Item.of(event) for event in events]
        self._remember(items)
        for call in list(self.calls):  # a call may leave while offered
            call.offer(items)
        return bool(self.calls)

    def _remember(self, items: list[Item]) -> None:
        self.recent.extend(items)
        self.recent_bytes += sum(len(item.piece) for item in items)
        self.forget_recent(self.hub.recent_share())

    def forget_recent(self, bound: int) -> None:
        """Drop the oldest recent events past RECENT_EVENTS or `bound` bytes."""
        recent = self.recent
        while recent and (len(recent) > RECENT_EVENTS or self.recent_bytes > bound):
            gone = recent.popleft()
            self.recent_bytes -= len(gone.piece)
            self.recent_after = gone.sequence


class Hub:
    """The taps of one events service, by filter."""

    def __init__(self, event_log: EventLog, stopping: asyncio.Event) -> None:
        self.event_log = event_log
        self.stopping = stopping
        self.taps: dict[tuple[str, ...], Tap] = {}
        self.left_behind = 0  # calls that left a tap because they fell behind (a metric)

    def lead(self, key: tuple[str, ...], reader: EventReader, after: int) -> Tap:
        tap = Tap(self, key, reader, after)
        self.taps[key] = tap
        share = self.recent_share()
        for other in self.taps.values():  # each tap's share is smaller now
            if other.recent_bytes > share:
                other.forget_recent(share)
        return tap

    def recent_share(self) -> int:
        """What one tap's recent events may hold: its part of HUB_RECENT_BYTES."""
        share = HUB_RECENT_BYTES // max(1, len(self.taps))
        return max(RECENT_MIN_BYTES, min(RECENT_BYTES, share))

    def forget(self, tap: Tap) -> None:
        if self.taps.get(tap.key) is tap:
            del self.taps[tap.key]

    async def last_sequence(self) -> int:
        """The log's last sequence: what "only new events" starts after. Tries again while NATS
        is away, a request lost with a dying connection included (`EventLog.request_js`), for
        EVENTS_PUBLISH_TIMEOUT_SECONDS, as a reader's opening."""
        return await self.event_log.last_sequence()

    def reader(self, types: list[str], subject: str, start: StartAt) -> EventReader:
        return self.event_log.read(types, subject, start, stop=self.stopping)


class Call:
    """What one StreamEvents call sends: its tap's queued events, or those of its own reader.

    `next_message` gives the call's next message, serialized (see `Item`), or None when the
    service stops. `sent` is the last sequence in a message given (where to resume from).
    """

    def __init__(
        self,
        hub: Hub,
        types: list[str],
        subject: str,
        start: StartAt,
        per_message: int,
        message_bytes: int,
        hold: float,
    ) -> None:
        self.hub = hub
        self.types = types
        self.subject = subject
        self.filters = filter_subjects(types, subject)  # INVALID_ARGUMENT before touching NATS
        self.key = tuple(sorted(self.filters))
        self.start = start
        self.per_message = per_message
        self.message_bytes = message_bytes
        self.hold = hold
        # The last sequence taken (queued or read), once known (a start time: its first event).
        self.after: int | None = start.after_sequence
        if start.from_beginning:
            self.after = 0
        self.sent = start.after_sequence or 0
        self.delivered = 0  # events taken for this call (queued or read)
        self.queue: collections.deque[Item] = collections.deque()
        self.queued_bytes = 0
        self.tap: Tap | None = None
        self.behind = False  # left its tap, falling behind: goes on with a reader of its own
        self.reader: EventReader | None = None
        self.wake = asyncio.Event()
        self._sent_at = float("-inf")  # loop time of the last batched message from the queue

    @property
    def consumer_name(self) -> str | None:
        """The JetStream consumer the call reads through now (None: being recreated)."""
        reader = self.tap.reader if self.tap is not None else self.reader
        return reader.consumer_name if reader is not None else None

    @property
    def last_sequence(self) -> int:
        """The last sequence read from the log for this call (as `EventReader.last_sequence`)."""
        read = self.reader.last_sequence if self.reader is not None else 0
        return max(self.after or 0, read)

    @property
    def resets(self) -> int:
        """How often the reader the call reads through now recreated its consumer."""
        reader = self.tap.reader if self.tap is not None else self.reader
        return reader.resets if reader is not None else 0

    @property
    def buffered(self) -> int:
        """Events taken for this call and not yet given in a message."""
        return len(self.queue) + (self.reader.buffered if self.reader is not None else 0)

    @property
    def held_bytes(self) -> int:
        """The bytes of the events held in this process for this call and not yet given in a
        message: its queue (at most QUEUE_BYTES) or its reader's last pull (at most the
        reader's `batch_bytes`, or one larger event). The message given last is gRPC's until
        written: at most MESSAGE_BYTES more, or one event."""
        reader = self.reader
        return self.queued_bytes + (reader.buffered_bytes if reader is not None else 0)

    async def open(self) -> None:
        """Subscribe: once this returns, every matching event stored after the start position
        (or, with none, published from now on) will be given, in order, each once."""
        start = self.start
        if start.after_sequence is None and not start.from_beginning and start.time is None:
            self.after = await self.hub.last_sequence()
            # Where a stream "from now" resumes from before it sent anything (its heartbeats
            # say it): 0 would replay the whole log (QA s27 F7).
            self.sent = self.after
        tap = self.hub.taps.get(self.key)
        if self.after is not None and tap is not None and tap.serves(self.after):
            tap.join(self, self.after)
            return
        if self.start.time is not None:
            self.reader = self.hub.reader(self.types, self.subject, self.start)
        else:
            assert self.after is not None
            self.reader = self.hub.reader(self.types, self.subject, StartAt.after(self.after))
        await self.reader.open()
        await self._catch_up()

    async def close(self) -> None:
        self.queue.clear()  # (as a tap's recent events: the call may outlive this in a cycle)
        self.queued_bytes = 0
        tap, self.tap = self.tap, None
        if tap is not None:
            await tap.leave(self)
        reader, self.reader = self.reader, None
        if reader is not None:
            await reader.aclose()

    async def next_message(self) -> bytes | None:
        while True:
            if self.queue:
                if self.per_message > 1 and self.tap is not None:
                    loop = asyncio.get_running_loop()
                    wait = self._sent_at + self.tap.hold() - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)  # the tap keeps queueing meanwhile
                    self._sent_at = loop.time()
                return self._from_queue()
            tap = self.tap
            if tap is not None:
                if not (self.behind or tap.ended):
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                if not self.behind:
                    if tap.error is not None:
                        raise tap.error
                    return None  # the service is stopping
                self.tap, self.behind = None, False
                assert self.after is not None
                self.reader = self.hub.reader(self.types, self.subject, StartAt.after(self.after))
            if self.reader is None:
                return None
            return await self._from_reader(self.reader)

    def attach(self, tap: Tap, items: list[Item]) -> None:
        self.tap = tap
        self.behind = False
        self._enqueue(items)

    def offer(self, items: list[Item]) -> None:
        """The tap's next events: queued, or (past the bounds) the call leaves the tap."""
        after = self.after or 0
        if items[-1].sequence <= after:
            return
        if items[0].sequence <= after:
            items = [item for item in items if item.sequence > after]
        size = sum(len(item.piece) for item in items)
        if len(self.queue) + len(items) > QUEUE_EVENTS or self.queued_bytes + size > QUEUE_BYTES:
            assert self.tap is not None
            self.tap.calls.discard(self)
            self.behind = True
            self.hub.left_behind += 1
            self.wake.set()
            return
        self._enqueue(items, size)

    def _enqueue(self, items: list[Item], size: int | None = None) -> None:
        if not items:
            return
        self.queue.extend(items)
        self.queued_bytes += sum(len(item.piece) for item in items) if size is None else size
        self.after = items[-1].sequence
        self.delivered += len(items)
        self.wake.set()

    def _from_queue(self) -> bytes:
        queue = self.queue
        if self.per_message <= 1:
            item = queue.popleft()
            self.queued_bytes -= len(item.piece)
            self.sent = item.sequence
            return item.single
        pieces: list[bytes] = []
        size = 0
        while queue and len(pieces) < self.per_message and size < self.message_bytes:
            item = queue.popleft()
            pieces.append(item.piece)
            size += len(item.piece)
        self.queued_bytes -= size
        self.sent = item.sequence
        return b"".join(pieces)

    async def _from_reader(self, reader: EventReader) -> bytes | None:
        try:
            if self.per_message <= 1:
                events = [await anext(reader)]
            else:
                events = await reader.next_batch(self.per_message, self.message_bytes, self.hold)
        except StopAsyncIteration:
            return None
        self.after = events[-1].sequence
        self.delivered += len(events)
        await self._catch_up()
        self.sent = self.after
        if len(events) == 1 and self.per_message <= 1:
            return _single(events[0])
        return b"".join(Item.of(event).piece for event in events)

    async def _catch_up(self) -> None:
        """Join the filter's tap once the own reader has caught up with the log (nothing
        pending, nothing buffered), or become the tap when there is none."""
        reader = self.reader
        if reader is None or self.after is None or reader.pending != 0 or reader.buffered:
            return
        tap = self.hub.taps.get(self.key)
        if tap is None and reader.start.time is None:
            # The reader's position is this call's: it goes on as the filter's tap. (A reader
            # with a start time skips what was stored before it: never one to share.)
            self.reader = None
            self.hub.lead(self.key, reader, self.after).join(self, self.after)
        elif tap is not None and tap.serves(self.after):
            self.reader = None
            tap.join(self, self.after)
            await reader.aclose()
