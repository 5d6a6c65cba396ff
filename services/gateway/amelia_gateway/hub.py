"""The fan-out hub: subscribers with the same live filter share one upstream gRPC stream.

A subscription is a *feed* of events for one sink (a socket's subscription):

- **live** (`since: "now"`): joins the *topic* for its filter. A topic is one StreamEvents call
  asking for up to EVENTS_PER_MESSAGE events per message; each message's events are serialized to
  JSON once, into one `Chunk`, and that same chunk is handed to every sink, however many (a
  socket then sends it as one `events` message, or one `event` message per event). Sinks that
  asked for batches (`"batch": true`) get the topic's events coalesced for at most the hub's
  `batch_window` (WS_BATCH_WINDOW_MS) from the first one's arrival, or until a chunk is full: one
  socket message per window instead of one per upstream message, the sends and the clients'
  wake-ups cut several-fold at a steady rate, each event delayed by at most the window. The
  other sinks get each chunk at once.
- **catch-up** (`since` a sequence, a time or the beginning): reads its own StreamEvents call from
  its start while also joining the live topic, buffering what the topic sends. When its own stream
  reaches the first buffered live event, it hands over: its own call is cancelled and the buffer is
  flushed (skipping what it already sent), so a reconnecting client ends up on the shared stream
  with no gap and no duplicate. If the buffer overflows first (more than CATCH_UP_BUFFER events,
  a long replay), it stays on its own stream for good, still correct, just not shared. The buffer
  also counts in its socket's byte budget (WS_SEND_QUEUE_BYTES, with the socket's send queue):
  past it, a replay whose client reads does the same; one whose client stopped reading
  (`Budgeted.stalled`) has its socket closed as a slow consumer, as a full send queue does, to
  resume from what it delivered.
- **run** (`run: "runs/…"`): its own AgentService.StreamRun call, which replays the run and ends
  when the run does; asking for up to EVENTS_PER_MESSAGE events per message when the
  subscription batches.

Every upstream call resumes after the last sequence it delivered when the service drops it
(UNAVAILABLE, a restart), so sinks see neither a gap nor a duplicate. A topic whose last sink
leaves cancels its call at once; the events service then deletes its consumer.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from amelia.v1 import agents_pb2, events_pb2
from amelia_common.logging import get_logger
from amelia_gateway.errors import GatewayError, internal
from amelia_gateway.event_json import event_json
from amelia_gateway.upstream import Upstream, Upstreams, waiting_for, watch_opening

log = get_logger("amelia.gateway.hub")

# Codes after which an upstream stream is reopened (after its last sequence) instead of ending.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Codes that say the request was wrong (a bad filter, an unknown run), not that the stream broke.
CALLER_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}
MAX_BACKOFF = 2.0
# How a notice that a stream is interrupted (`final: false`) ends.
RESUMES = "; waiting for it, the events follow once it is back"
# How the notice that it is open again (a `status` message on a socket) ends.
BACK = ": the stream is open again, its events follow from where they stopped"
# Live events a catch-up feed buffers while its own stream replays history (and at most its
# socket's byte budget of them, `Budgeted.fits`).
CATCH_UP_BUFFER = 10_000
# Most bytes of event text the hub joins into one chunk for batching sinks (`_Coalesced`), and a
# socket into one `events` message: what the events service puts in one message at most.
CHUNK_BYTES = 1024 * 1024
# Most events per StreamEvents message asked of the events service (events already read go
# together, none is waited for): a burst costs one gRPC message and one hand-off per sink, not one
# per event. A quarter of a socket's send queue at most (`events_per_message`), so a chunk always
# fits beside what the socket already holds.
EVENTS_PER_MESSAGE = 256


def events_per_message(send_queue: int) -> int:
    """Events per upstream message for sockets whose send queue holds `send_queue` events."""
    return max(1, min(EVENTS_PER_MESSAGE, send_queue // 4))


class Chunk:
    """Consecutive events of one filter, serialized once and shared by every sink they go to.

    The socket messages' per-event parts are built on first use and kept, so a hundred sockets
    sending the same chunk share one string, and only the small envelope differs per socket.
    """

    __slots__ = ("_items", "_tails", "nbytes", "sequences", "texts")

    def __init__(self, sequences: list[int], texts: list[str], nbytes: int = -1) -> None:
        self.sequences = sequences
        self.texts = texts
        # What the chunk weighs in a socket's byte budget: the memory of its events' JSON texts
        # (sys.getsizeof: a text with non-ASCII characters takes 2 or 4 bytes a character),
        # counted once here so queueing costs an addition.
        self.nbytes = nbytes if nbytes >= 0 else sum(map(sys.getsizeof, texts))
        self._items: str | None = None
        self._tails: list[str] | None = None

    @classmethod
    def of(cls, events: list[events_pb2.Event]) -> Chunk:
        return cls([e.sequence for e in events], [event_json(e) for e in events])

    @classmethod
    def joined(cls, chunks: list[Chunk]) -> Chunk:
        """Consecutive chunks as one (the one itself when alone)."""
        if len(chunks) == 1:
            return chunks[0]
        return cls(
            [s for c in chunks for s in c.sequences],
            [t for c in chunks for t in c.texts],
            sum(c.nbytes for c in chunks),
        )

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def first(self) -> int:
        return self.sequences[0]

    @property
    def last(self) -> int:
        return self.sequences[-1]

    def after(self, sequence: int) -> Chunk | None:
        """The events after `sequence` (this chunk when it is all of them), or None."""
        if self.sequences[0] > sequence:
            return self
        return self._where(lambda s: s > sequence)

    def before(self, sequence: int) -> Chunk | None:
        """The events before `sequence`, or None."""
        return self._where(lambda s: s < sequence)

    def _where(self, keeps: Callable[[int], bool]) -> Chunk | None:
        kept = [(s, t) for s, t in zip(self.sequences, self.texts, strict=True) if keeps(s)]
        if not kept:
            return None
        return Chunk([s for s, _ in kept], [t for _, t in kept])

    def items(self) -> str:
        """`{"sequence":…,"event":…}` for each event, comma-separated (an `events` message's)."""
        if self._items is None:
            self._items = ",".join(
                f'{{"sequence":{s},"event":{t}}}'
                for s, t in zip(self.sequences, self.texts, strict=True)
            )
        return self._items

    def tails(self) -> list[str]:
        """What follows `"sequence":` in each event's own `event` message."""
        if self._tails is None:
            self._tails = [
                f'{s},"event":{t}}}' for s, t in zip(self.sequences, self.texts, strict=True)
            ]
        return self._tails


class Sink(Protocol):
    """Where a feed delivers: a socket's subscription."""

    def push(self, chunk: Chunk) -> None:
        """Events already serialized; must not block (a full sink closes its socket)."""

    async def room(self) -> None:
        """Wait until the sink can take another chunk without falling behind (a feed reading a
        stream of its own waits for this: a replay goes at the client's pace)."""

    def fail(self, error: GatewayError, final: bool) -> None:
        """The upstream failed; `final` means the feed is over."""

    def end(self) -> None:
        """The upstream ended normally (a run finished)."""

    def back(self, message: str) -> None:
        """The upstream stream is open again after a `fail(…, final=False)`."""

    def opened(self) -> None:
        """The feed's own stream is open: its service took the start position (a feed that
        `FeedSpec.resumes` calls it once, before its first event)."""


class Budgeted(Sink, Protocol):
    """A sink with a byte budget (a socket's subscription: WS_SEND_QUEUE_BYTES for the socket's
    send queue and what its catch-up feeds buffer), which a catch-up feed's buffer counts in."""

    def push(self, chunk: Chunk, held: int = 0) -> None:
        """As `Sink.push`; `held`: the bytes of a buffered chunk it comes from, which move from
        the hold to the sink's queue (no more than the sink already holds: never refused)."""

    def fits(self, nbytes: int) -> bool:
        """Whether `nbytes` more (pushed or held) keep the sink's socket within its budget."""

    def hold(self, nbytes: int) -> None:
        """`nbytes` more (less, when negative) are buffered for the sink outside its queue."""

    def stalled(self) -> bool:
        """Whether the sink's client has taken nothing for a while though it has events waiting
        (a socket: STALL_SECONDS)."""

    def overflow(self) -> None:
        """The sink is over its budget and does not read: close it as a slow consumer."""


@dataclass(frozen=True)
class Since:
    """Where a feed starts: `now`, `beginning`, after a `sequence`, or at a `time`."""

    kind: str  # "now" | "beginning" | "after" | "time"
    sequence: int = 0
    time: Timestamp | None = None


@dataclass(frozen=True)
class FeedSpec:
    """What a subscription wants."""

    types: tuple[str, ...] = ()
    subject: str = ""
    run: str = ""
    since: Since = Since("now")
    # Send events already queued for the socket together, in one `events` message.
    batch: bool = False

    @property
    def topic_key(self) -> tuple[tuple[str, ...], str]:
        return (self.types, self.subject)

    @property
    def resumes(self) -> bool:
        """It starts after a sequence, which its service checks as it opens the stream (beyond
        the log's end: OUT_OF_RANGE); its feed tells the sink `opened` once it took it."""
        return self.since.kind == "after"


def _events_of(
    response: events_pb2.StreamEventsResponse | agents_pb2.StreamRunResponse,
) -> Sequence[events_pb2.Event]:
    """A StreamEvents or StreamRun message's events: `events` when it carries several (the
    request asked for `max_events_per_message`), else its one `event`."""
    if len(response.events):
        return response.events
    return [response.event]


@dataclass(eq=False)
class UpstreamStream:
    """One server-streaming call of events, reopened after its last sequence when dropped."""

    hub: Hub
    service: str
    rpc: str
    request_for: Callable[[int], Message]
    _: KW_ONLY
    on_events: Callable[[list[events_pb2.Event]], bool]
    on_error: Callable[[GatewayError, bool], None]
    on_end: Callable[[], None] | None = None
    # Called once the stream is open again after an interruption its subscribers were told of.
    on_back: Callable[[str], None] | None = None
    # Called once, when the stream is first open (before its first events or its end).
    on_open: Callable[[], None] | None = None
    # Awaited after each message's events were handed on (a feed with a stream of its own
    # waits for its socket's queue there).
    pace: Callable[[], Awaitable[None]] | None = None
    follow: bool = True
    last: int = 0
    task: asyncio.Task[None] | None = field(default=None, init=False)
    # Whether the subscribers were told the stream is interrupted (told once per outage).
    failing: bool = field(default=False, init=False)
    opened: bool = field(default=False, init=False)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"upstream-{self.rpc}")

    def stop(self) -> None:
        """Cancel the call (its task ends it); safe to call twice."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _dependency_down(self, upstream: Upstream, dependency: str) -> None:
        """The service waits for `dependency` before it opens the stream (the events service
        for NATS, sending nothing meanwhile): tell the subscribers once, `final: false`."""
        if not self.failing:
            self.failing = True
            waiting = waiting_for(upstream, dependency)
            waiting.message += RESUMES
            log.warning(
                "upstream stream waits for a dependency", rpc=self.rpc, error=waiting.message
            )
            self.on_error(waiting, False)

    async def _watch(self, call: Any, upstream: Upstream) -> None:
        """Watch the opening of `call` (`watch_opening`); once the service sent its headers (it
        subscribed the call) after an interruption the subscribers were told of, tell them it is
        back: without it a client keeps its outage notice until the next event, however long."""
        await watch_opening(call, upstream, lambda d: self._dependency_down(upstream, d))
        # A call that failed has empty headers too, and is done by then.
        if not call.done():
            self._open()
            self._back(upstream)

    def _open(self) -> None:
        """The call is open (headers, events or its end came): tell `on_open`, the first time."""
        if not self.opened:
            self.opened = True
            if self.on_open is not None:
                self.on_open()

    def _back(self, upstream: Upstream) -> None:
        """The stream is open (or delivers) again: tell the subscribers if they heard it was not."""
        if self.failing:
            self.failing = False
            log.info("upstream stream open again", rpc=self.rpc)
            if self.on_back is not None:
                self.on_back(f"the {upstream.name} service is back{BACK}")

    async def _run(self) -> None:
        delay = 0.1
        upstream = self.hub.upstreams[self.service]
        while True:
            call = self.hub.upstreams.callable(self.service, self.rpc)(self.request_for(self.last))
            self.hub.calls_opened += 1
            self.hub.calls_active += 1
            watch = asyncio.create_task(self._watch(call, upstream))
            error: GatewayError | None = None
            code = grpc.StatusCode.OK
            try:
                async for response in call:
                    events = [e for e in _events_of(response) if e.sequence > self.last]
                    if not events:
                        continue
                    self.last = events[-1].sequence
                    delay = 0.1
                    # (A service that sends its headers with its first event.)
                    if not self.opened:
                        self._open()
                    self._back(upstream)
                    if not self.on_events(events):
                        return
                    if self.pace is not None:
                        await self.pace()
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                error = upstream.error(exc, self.service)
                if code not in RETRYABLE and code not in CALLER_ERRORS:
                    # The service broke the stream (UNIMPLEMENTED: AGENTS_ADDRESS names another
                    # service; INTERNAL: its log has the request id): say which service it was.
                    error = GatewayError(
                        code,
                        f"the {upstream.name} service at {upstream.address} ended it with "
                        f"{code.name}: {error.message}",
                        service=self.service,
                        details=error.details,
                    )
            except Exception:
                # The gateway's own bug: the traceback goes to its log, never to the client.
                log.exception("upstream stream failed", rpc=self.rpc)
                error = internal(f"reading {self.service}.{self.rpc}")
                code = grpc.StatusCode.INTERNAL
            finally:
                watch.cancel()
                call.cancel()
                self.hub.calls_active -= 1
            if code == grpc.StatusCode.OK:
                self._open()
                if not self.follow:
                    if self.on_end is not None:
                        self.on_end()
                    return
                error = GatewayError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the {upstream.name} service ended the stream; reconnecting",
                )
                code = grpc.StatusCode.UNAVAILABLE
            assert error is not None
            if code not in RETRYABLE:
                self.on_error(error, True)
                return
            if not self.failing:
                log.warning("upstream stream interrupted", rpc=self.rpc, error=error.message)
                error.message += RESUMES
                self.on_error(error, False)
                self.failing = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)


class Topic:
    """One shared live StreamEvents call for a filter, and the sinks it feeds: `sinks` each chunk
    at once, `batching` sinks the chunks of up to `hub.batch_window` together (`_Coalesced`)."""

    def __init__(self, hub: Hub, key: tuple[tuple[str, ...], str]) -> None:
        self.hub = hub
        self.key = key
        self.sinks: dict[int, Sink] = {}
        self.batching: dict[int, Sink] = {}
        self.coalesced = _Coalesced(self.batching, hub.batch_window, hub.events_per_message)
        # "now" is the moment the topic opened; a reconnect before the first event resumes at
        # that moment, after it right after the last sequence.
        self.opened = Timestamp()
        self.opened.GetCurrentTime()
        self.stream = UpstreamStream(
            hub,
            "EventService",
            "StreamEvents",
            self._request,
            on_events=self._on_events,
            on_error=self._on_error,
            on_back=self._on_back,
        )
        self.stream.start()

    def _request(self, last: int) -> events_pb2.StreamEventsRequest:
        types, subject = self.key
        request = events_pb2.StreamEventsRequest(
            filter=events_pb2.EventFilter(types=list(types), subject=subject),
            max_events_per_message=self.hub.events_per_message,
        )
        if last:
            request.after_sequence = last
        else:
            request.start_time.CopyFrom(self.opened)
        return request

    def _on_events(self, events: list[events_pb2.Event]) -> bool:
        chunk = Chunk.of(events)
        self.hub.serialized += len(chunk)
        for sink in list(self.sinks.values()):
            sink.push(chunk)
        if self.batching:
            self.coalesced.add(chunk)
        return True

    def _on_error(self, error: GatewayError, final: bool) -> None:
        self.coalesced.flush()  # the events before the error
        sinks = [*self.sinks.values(), *self.batching.values()]
        if final:
            self.sinks.clear()
            self.batching.clear()
            self.hub._drop(self)
        for sink in sinks:
            sink.fail(error, final)

    def _on_back(self, message: str) -> None:
        for sink in [*self.sinks.values(), *self.batching.values()]:
            sink.back(message)

    def add(self, sink: Sink, *, batch: bool = False) -> None:
        """Feed `sink` from now on; `batch`: coalesced (a socket subscription that asked for
        batches)."""
        if batch and self.coalesced.window > 0:
            self.coalesced.flush()  # what came before it joined is not its
            self.batching[id(sink)] = sink
        else:
            self.sinks[id(sink)] = sink

    def remove(self, sink: Sink) -> None:
        self.sinks.pop(id(sink), None)
        self.batching.pop(id(sink), None)
        if not self.batching:
            self.coalesced.drop()
        if not self.sinks and not self.batching:
            self.hub._drop(self)


class _Coalesced:
    """A topic's events waiting for its batching sinks: handed to them together, as one chunk,
    `window` seconds after the first arrived or as soon as they fill a chunk (at most
    `most` events, so a chunk still fits in one socket message), whichever comes first."""

    def __init__(self, sinks: dict[int, Sink], window: float, most: int) -> None:
        self.sinks = sinks
        self.window = window
        self.most = most
        self.pending: list[Chunk] = []
        self.count = 0
        self.nbytes = 0
        self.timer: asyncio.TimerHandle | None = None

    def add(self, chunk: Chunk) -> None:
        if self.window <= 0:
            self._push(chunk)
            return
        if self.count + len(chunk) > self.most or self.nbytes + chunk.nbytes > CHUNK_BYTES:
            self.flush()
        self.pending.append(chunk)
        self.count += len(chunk)
        self.nbytes += chunk.nbytes
        if self.count >= self.most or self.nbytes >= CHUNK_BYTES:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.window, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            chunk = Chunk.joined(self.pending)
            self.pending, self.count, self.nbytes = [], 0, 0
            self._push(chunk)

    def _push(self, chunk: Chunk) -> None:
        for sink in list(self.sinks.values()):
            sink.push(chunk)

    def drop(self) -> None:
        """Nobody to flush to any more."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending, self.count, self.nbytes = [], 0, 0


class Feed:
    """A subscription's source of events; `close()` detaches it and cancels what it alone uses."""

    def close(self) -> None:
        raise NotImplementedError


class LiveFeed(Feed):
    def __init__(self, hub: Hub, spec: FeedSpec, sink: Sink) -> None:
        self.topic = hub._topic(spec.topic_key)
        self.sink = sink
        self.topic.add(sink, batch=spec.batch)

    def close(self) -> None:
        self.topic.remove(self.sink)


class _Relay:
    """A catch-up feed's seat in the live topic: buffers until hand-over, then forwards."""

    def __init__(self, feed: CatchUpFeed) -> None:
        self.feed = feed

    def push(self, chunk: Chunk) -> None:
        self.feed._live(chunk)

    async def room(self) -> None:  # pragma: no cover - topics do not wait
        pass

    def fail(self, error: GatewayError, final: bool) -> None:
        self.feed._live_failed(error, final)

    def back(self, message: str) -> None:
        if self.feed.handed_over and not self.feed.closed:
            self.feed.sink.back(message)

    def end(self) -> None:  # pragma: no cover - topics follow forever
        pass

    def opened(self) -> None:  # pragma: no cover - topics do not tell
        pass


class CatchUpFeed(Feed):
    """Replays from a past position on its own stream, then moves onto the shared topic."""

    def __init__(self, hub: Hub, spec: FeedSpec, sink: Budgeted) -> None:
        self.hub = hub
        self.spec = spec
        self.sink = sink
        self.last = spec.since.sequence if spec.since.kind == "after" else 0
        self.buffer: collections.deque[Chunk] = collections.deque()
        self.buffered = 0  # events in `buffer`
        self.buffered_bytes = 0  # their bytes, held in the sink's budget (`Budgeted.hold`)
        self.handed_over = False
        self.closed = False
        self.relay: _Relay | None = _Relay(self)
        self.topic: Topic | None = hub._topic(spec.topic_key)
        self.topic.add(self.relay)
        self.own = UpstreamStream(
            hub,
            "EventService",
            "StreamEvents",
            self._request,
            on_events=self._own_events,
            on_error=self._own_failed,
            on_back=self._own_back,
            on_open=self._own_opened,
            pace=sink.room,
            last=self.last,
        )
        self.own.start()

    def _request(self, last: int) -> events_pb2.StreamEventsRequest:
        request = events_pb2.StreamEventsRequest(
            filter=events_pb2.EventFilter(types=list(self.spec.types), subject=self.spec.subject),
            max_events_per_message=self.hub.events_per_message,
        )
        since = self.spec.since
        if last:
            request.after_sequence = last
        elif since.kind == "beginning":
            request.from_beginning = True
        elif since.kind == "time" and since.time is not None:
            request.start_time.CopyFrom(since.time)
        return request

    def _forward(self, chunk: Chunk | None, held: int = 0) -> None:
        """Send what of `chunk` comes after the last event sent; `held`: the bytes of the
        buffered chunk it is, released from the sink's hold as it goes to its queue."""
        rest = chunk.after(self.last) if chunk is not None else None
        if rest is not None:
            self.last = rest.last
            self.sink.push(rest, held)
        elif held:
            self.sink.hold(-held)

    def _own_events(self, events: list[events_pb2.Event]) -> bool:
        if self.closed or self.handed_over:
            return False
        chunk = Chunk.of(events)
        if self.buffer and not self.sink.fits(chunk.nbytes):
            # The buffer leaves no room in the socket's budget for the replay, which goes on
            # (its client reads): stay on our own stream, as when it holds too many events.
            self._leave_topic()
        if self.topic is not None and self.buffer and chunk.last >= self.buffer[0].first:
            # Our replay reached what the live topic has buffered (gap-free from its first
            # event): send our events before it, then the buffer, and stay on the topic.
            self.handed_over = True
            self.hub.handovers += 1
            buffered = list(self.buffer)
            self.buffer.clear()
            self.buffered = 0
            self._forward(chunk.before(buffered[0].first))
            for each in buffered:  # (their bytes move from the hold to the socket's queue)
                self.buffered_bytes -= each.nbytes
                self._forward(each, each.nbytes)
            return False
        self._forward(chunk)
        return True

    def _own_failed(self, error: GatewayError, final: bool) -> None:
        if not self.handed_over and not self.closed:
            self.sink.fail(error, final)
            if final:
                self.close()

    def _own_back(self, message: str) -> None:
        if not self.handed_over and not self.closed:
            self.sink.back(message)

    def _own_opened(self) -> None:
        if not self.closed:
            self.sink.opened()

    def _live(self, chunk: Chunk) -> None:
        if self.closed:
            return
        if self.handed_over:
            self._forward(chunk)
            return
        if not self.sink.fits(chunk.nbytes):
            if self.sink.stalled():
                # The client does not read (its replay waits for it): closed as a slow consumer,
                # to resume from the last event it got.
                self.sink.overflow()
            # Either way the buffer goes: the socket closes, or the replay goes on (its client
            # reads) and stays on our own stream.
            self._leave_topic()
            return
        self.buffer.append(chunk)
        self.buffered += len(chunk)
        self.buffered_bytes += chunk.nbytes
        self.sink.hold(chunk.nbytes)
        if self.buffered > CATCH_UP_BUFFER:
            # Too far behind to buffer the live stream meanwhile: stay on our own stream.
            self._leave_topic()

    def _live_failed(self, error: GatewayError, final: bool) -> None:
        if self.handed_over:
            self.sink.fail(error, final)
            if final:
                self.close()
        elif final:
            self.topic = None
            self.relay = None
            self._drop_buffer()

    def _leave_topic(self) -> None:
        if self.topic is not None and self.relay is not None:
            self.topic.remove(self.relay)
        self.topic = None
        self.relay = None
        self._drop_buffer()

    def _drop_buffer(self) -> None:
        self.buffer.clear()
        self.buffered = 0
        if self.buffered_bytes:
            self.sink.hold(-self.buffered_bytes)
            self.buffered_bytes = 0

    def close(self) -> None:
        self.closed = True
        self.own.stop()
        self._leave_topic()


class RunFeed(Feed):
    """AgentService.StreamRun for one run: replay, follow, end with the run."""

    def __init__(self, hub: Hub, spec: FeedSpec, sink: Sink) -> None:
        self.sink = sink
        self.closed = False
        last = spec.since.sequence if spec.since.kind == "after" else 0
        # A batching subscription asks for several events per message (a replay then comes as a
        # few chunks, each one `events` socket message); a plain one for one at a time.
        per_message = hub.events_per_message if spec.batch else 0
        self.stream = UpstreamStream(
            hub,
            "AgentService",
            "StreamRun",
            lambda last: agents_pb2.StreamRunRequest(
                name=spec.run, after_sequence=last, max_events_per_message=per_message
            ),
            on_events=self._events,
            on_error=self._failed,
            on_end=self._end,
            on_back=self._back,
            on_open=self._opened,
            pace=sink.room,
            follow=False,
            last=last,
        )
        self.stream.start()

    def _events(self, events: list[events_pb2.Event]) -> bool:
        if self.closed:
            return False
        self.sink.push(Chunk.of(events))
        return True

    def _failed(self, error: GatewayError, final: bool) -> None:
        if not self.closed:
            self.sink.fail(error, final)

    def _end(self) -> None:
        if not self.closed:
            self.sink.end()

    def _back(self, message: str) -> None:
        if not self.closed:
            self.sink.back(message)

    def _opened(self) -> None:
        if not self.closed:
            self.sink.opened()

    def close(self) -> None:
        self.closed = True
        self.stream.stop()


class Hub:
    """All topics of one gateway, and counters that prove the sharing."""

    def __init__(
        self,
        upstreams: Upstreams,
        events_per_message: int = EVENTS_PER_MESSAGE,
        batch_window: float = 0.0,
    ) -> None:
        self.upstreams = upstreams
        self.events_per_message = events_per_message
        # Seconds a topic holds events for its batching sinks (see `_Coalesced`); 0: none.
        self.batch_window = batch_window
        self.topics: dict[tuple[tuple[str, ...], str], Topic] = {}
        self.calls_opened = 0
        self.calls_active = 0
        self.serialized = 0
        self.handovers = 0
        self.started = time.monotonic()

    def feed(self, spec: FeedSpec, sink: Budgeted) -> Feed:
        """Start delivering `spec` to `sink`."""
        if spec.run:
            return RunFeed(self, spec, sink)
        if spec.since.kind == "now":
            return LiveFeed(self, spec, sink)
        return CatchUpFeed(self, spec, sink)

    def _topic(self, key: tuple[tuple[str, ...], str]) -> Topic:
        topic = self.topics.get(key)
        if topic is None:
            topic = self.topics[key] = Topic(self, key)
        return topic

    def _drop(self, topic: Topic) -> None:
        if self.topics.get(topic.key) is topic:
            del self.topics[topic.key]
        topic.coalesced.drop()
        topic.stream.stop()

    def stats(self) -> dict[str, Any]:
        return {
            "topics": len(self.topics),
            "upstreamStreams": self.calls_active,
            "upstreamStreamsOpened": self.calls_opened,
            "eventsSerialized": self.serialized,
            "catchUpHandovers": self.handovers,
        }

    async def close(self) -> None:
        tasks = []
        for topic in list(self.topics.values()):
            topic.coalesced.drop()
            topic.stream.stop()
            if topic.stream.task is not None:
                tasks.append(topic.stream.task)
        self.topics.clear()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
