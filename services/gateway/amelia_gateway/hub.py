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
  with no gap and no duplicate. A replay that has caught up while its filter is quiet (no live
  event to meet) hands over too: once the log has no event of its filter after the last one it
  sent (`Hub.nothing_after`, a one-event ListEvents page, asked while the topic's call is open
  and not interrupted), every later event is the topic's to bring. If the buffer overflows
  first (more than CATCH_UP_BUFFER events, a long replay), it stays on its own stream for good,
  still correct, just not shared. The buffer also counts in its socket's byte budget
  (WS_SEND_QUEUE_BYTES, with the socket's send queue): past it, a replay whose client reads does
  the same; one whose client stopped reading (`Budgeted.stalled`) has its socket closed as a slow
  consumer, as a full send queue does, to resume from what it delivered.
  Its own stream is a reader of the event log (a JetStream consumer) of its own: at most
  GATEWAY_MAX_REPLAYS of them run at once, WS_MAX_REPLAYS per socket (`Turns`); a catch-up past
  either waits its turn, joined to its topic but buffering nothing, and its replay starts from its
  `since` when the turn comes. Topics are readers too: a subscribe that needs one more than
  GATEWAY_MAX_FILTERS is refused (`Hub.admit`; WS_MAX_FILTERS per socket, `ws`).
- **run** (`run: "runs/…"`): its own AgentService.StreamRun call, which replays the run and ends
  when the run does; asking for up to EVENTS_PER_MESSAGE events per message when the
  subscription batches.

Every upstream call resumes after the last sequence it delivered when the service drops it
(UNAVAILABLE, a restart), so sinks see neither a gap nor a duplicate. One the events service
refuses because the event log has no room for another reader (RESOURCE_EXHAUSTED: JetStream's
consumer limit, which other clients hold) is not an outage: it is tried again less often
(`room_backoff`: 1 s doubling to 30 s, jittered, so many waiting calls do not come back
together), and the sinks are told so. A topic whose last sink leaves cancels its call at once;
the events service then deletes its consumer.
"""

from __future__ import annotations

import asyncio
import collections
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from amelia.v1 import agents_pb2, events_pb2
from amelia_common.grpc_server import from_servicer
from amelia_common.logging import get_logger
from amelia_common.settings import Settings
from amelia_gateway.errors import GatewayError, internal
from amelia_gateway.event_json import event_json
from amelia_gateway.upstream import Upstream, Upstreams, waiting_for, watch_opening

log = get_logger("amelia.gateway.hub")

# Codes after which an upstream stream is reopened (after its last sequence) instead of ending:
# the service or its dependency is down for a moment.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
}
# A RESOURCE_EXHAUSTED the service sent (the event log has as many readers as JetStream allows,
# `TooManyReadersError`) is reopened too, but it is no outage: another client holds the readers
# until it closes some, so it is tried again after ROOM_BACKOFF doubling to MAX_ROOM_BACKOFF
# (`room_backoff`), each pause jittered. (gRPC's own RESOURCE_EXHAUSTED, a message too large for
# the channel, would be refused again: it ends the stream.)
ROOM_BACKOFF = 1.0
MAX_ROOM_BACKOFF = 30.0
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
# How a notice that the event log has no room for the stream (`final: false`) ends.
NO_ROOM = (
    "; this is not an outage: the readers of the event log are all taken (by this or other"
    " clients). The gateway keeps the subscription and tries again every few seconds, at most"
    f" {MAX_ROOM_BACKOFF:g} s apart; its events follow from where they stopped, none missed or"
    " twice, once a reader is free"
)
# The notice that it is open again after such a wait.
ROOM_AGAIN = "the event log has room for the stream again" + BACK
# Seconds of silence after which a catch-up's own stream sends a heartbeat (then the hub asks
# whether its replay has caught up, `CatchUpFeed._probe`).
QUIET_SECONDS = 1
# How long the hub waits for the events service to say whether a replay has caught up.
PROBE_TIMEOUT = 30.0
# A catch-up asks whether it has caught up after a message with fewer events than it asked for
# (its replay may have reached the log's end), then after every 2nd such message, 4th, … up to
# every MAX_PROBE_SPACING-th while the answer is no (a sparse replay sends many short messages).
MAX_PROBE_SPACING = 64
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


def room_backoff(attempt: int) -> float:
    """Seconds before trying again, the `attempt`-th time (0, 1, …) in a row, a stream the event
    log had no room for: a random pause between half and all of ROOM_BACKOFF × 2^attempt, at most
    MAX_ROOM_BACKOFF ("equal jitter"), so the streams refused together come back apart."""
    ceiling = min(ROOM_BACKOFF * 2 ** min(attempt, 16), MAX_ROOM_BACKOFF)
    return random.uniform(ceiling / 2, ceiling)


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

    def queued(self, message: str) -> None:
        """The feed waits for its turn to replay (`Turns`): answer the subscribe now and say
        why nothing comes yet."""

    def started(self, message: str) -> None:
        """After `queued`: its turn came, the replay starts."""


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
    # Called on each heartbeat of the stream (one that asked for them: nothing to send for a
    # while).
    on_quiet: Callable[[], None] | None = None
    follow: bool = True
    last: int = 0
    task: asyncio.Task[None] | None = field(default=None, init=False)
    # Whether the subscribers were told the stream is interrupted (told once per outage), and
    # why: "outage" (the service or its dependency is down) or "room" (the event log has no room
    # for another reader).
    failing: bool = field(default=False, init=False)
    failing_why: str = field(default="", init=False)
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
            self.failing_why = "outage"
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
                self.on_back(self.back_message())

    def back_message(self) -> str:
        """What its subscribers are told once it is open again after `failing`."""
        if self.failing_why == "room":
            return ROOM_AGAIN
        return f"the {self.hub.upstreams[self.service].name} service is back{BACK}"

    def _tell(self, error: GatewayError, why: str) -> None:
        """Tell the subscribers the stream is interrupted (`final: false`), once per reason."""
        if self.failing and self.failing_why == why:
            return
        log.warning("upstream stream interrupted", rpc=self.rpc, error=error.message, reason=why)
        error.message += NO_ROOM if why == "room" else RESUMES
        self.failing = True
        self.failing_why = why
        self.on_error(error, False)

    async def _run(self) -> None:
        delay = 0.1
        refused = 0  # times in a row the event log had no room for the stream
        upstream = self.hub.upstreams[self.service]
        while True:
            call = self.hub.upstreams.callable(self.service, self.rpc)(self.request_for(self.last))
            self.hub.calls_opened += 1
            self.hub.calls_active += 1
            watch = asyncio.create_task(self._watch(call, upstream))
            error: GatewayError | None = None
            code = grpc.StatusCode.OK
            no_room = False
            try:
                async for response in call:
                    events = [e for e in _events_of(response) if e.sequence > self.last]
                    if not events:
                        if self.on_quiet is not None and response.HasField("heartbeat"):
                            self.on_quiet()
                        continue
                    self.last = events[-1].sequence
                    delay = 0.1
                    refused = 0
                    # (A service that sends its headers with its first event.)
                    if not self.opened:
                        self._open()
                    self._back(upstream)
                    if not self.on_events(events):
                        return
                    # Not kept while the sink's queue drains (for a client that stopped reading,
                    # for good): the events are in the sink's queue, as JSON, by now.
                    del response, events
                    if self.pace is not None:
                        await self.pace()
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                error = upstream.error(exc, self.service)
                no_room = code == grpc.StatusCode.RESOURCE_EXHAUSTED and from_servicer(exc)
                if code not in RETRYABLE and code not in CALLER_ERRORS and not no_room:
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
            if no_room:
                # Not an outage: the log's readers are taken until their clients close some.
                self._tell(error, "room")
                await asyncio.sleep(room_backoff(refused))
                refused += 1
                continue
            if code not in RETRYABLE:
                self.on_error(error, True)
                return
            self._tell(error, "outage")
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
            on_open=self._on_open,
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

    def _on_open(self) -> None:
        """The call is open (its consumer exists): the catch-ups on it may ask whether they
        have caught up."""
        for sink in list(self.sinks.values()):
            if isinstance(sink, _Relay):
                sink.opened()

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
        if self.feed.closed:
            return
        if self.feed.handed_over:
            self.feed.sink.back(message)
        else:
            self.feed._probe_soon()  # the topic delivers again

    def end(self) -> None:  # pragma: no cover - topics follow forever
        pass

    def opened(self) -> None:
        """The topic's call is open."""
        self.feed._probe_soon()


def _delivers(topic: Topic) -> bool:
    """Whether the topic's call is open (its consumer exists) and not interrupted: every event
    stored from now on will reach its sinks, in order."""
    return topic.stream.opened and not topic.stream.failing


class CatchUpFeed(Feed):
    """Replays from a past position on its own stream, then moves onto the shared topic.

    Its own stream is one of the gateway's replays (`Turns`): it waits for its turn, seated on the
    topic (its filter is taken) but buffering nothing, and starts from its `since` when it
    comes; the turn is given back once its own call has ended (handed over, failed, closed), or
    once a replay that left its topic has caught up (it reads on alone at the live edge).
    """

    def __init__(self, hub: Hub, spec: FeedSpec, sink: Budgeted, owner: object = None) -> None:
        self.hub = hub
        self.spec = spec
        self.sink = sink
        self.last = spec.since.sequence if spec.since.kind == "after" else 0
        self.buffer: collections.deque[Chunk] = collections.deque()
        self.buffered = 0  # events in `buffer`
        self.buffered_bytes = 0  # their bytes, held in the sink's budget (`Budgeted.hold`)
        self.handed_over = False
        self.closed = False
        # Its turn came: its own stream reads and the relay buffers the topic's events.
        self.replaying = False
        self.relay: _Relay | None = None
        self.topic: Topic | None = None
        self._join_topic()
        self.own = UpstreamStream(
            hub,
            "EventService",
            "StreamEvents",
            self._request,
            on_events=self._own_events,
            on_error=self._own_failed,
            on_back=self._own_back,
            on_open=self._own_opened,
            on_quiet=self._probe_soon,
            pace=sink.room,
            last=self.last,
        )
        # Asking whether the replay has caught up (`_probe`): the task, and whether to ask
        # again once it answers; after every how many short messages of its own stream.
        self.probing: asyncio.Task[None] | None = None
        self.probe_again = False
        self.short_messages = 0
        self.probe_spacing = 1
        # It left its topic and has caught up since: it reads on alone, its turn given back.
        self.alone = False
        self.turn = hub.turns.take(owner, self._begin)
        if self.turn.state == "running":
            self._begin()
        else:
            sink.queued(self.turn.why())

    @property
    def waiting(self) -> bool:
        """Whether it waits for its turn to replay."""
        return self.turn.state == "waiting"

    def _begin(self) -> None:
        """Its turn: buffer the topic's events from now on and start the replay."""
        if self.closed:
            self.turn.done()
            return
        if self.turn.waited:
            self.sink.started("its turn came: its replay starts now, from where it asked")
        self.replaying = True
        self.own.start()
        assert self.own.task is not None
        # The turn is given back once the call has really ended (cancelled or over).
        self.own.task.add_done_callback(lambda _task: self.turn.done())

    def _request(self, last: int) -> events_pb2.StreamEventsRequest:
        request = events_pb2.StreamEventsRequest(
            filter=events_pb2.EventFilter(types=list(self.spec.types), subject=self.spec.subject),
            max_events_per_message=self.hub.events_per_message,
            heartbeat_seconds=QUIET_SECONDS,
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
            self._forward(chunk.before(self.buffer[0].first))
            self._hand_over(stop=False)  # (its stream ends as this returns False)
            return False
        self._forward(chunk)
        if len(events) < self.hub.events_per_message:
            # A short message: the replay may have reached the log's end.
            self.short_messages += 1
            if self.short_messages >= self.probe_spacing:
                self.short_messages = 0
                self._probe_soon(spaced=True)
        return True

    def _hand_over(self, stop: bool = True) -> None:
        """Move onto the topic: flush its buffer after what was sent, follow it from now on,
        and end the own stream (its turn is given back once its call has ended)."""
        self.handed_over = True
        self.hub.handovers += 1
        if not self.own.opened:
            # The log had nothing after its resume point before its own stream opened: the
            # subscription is answered now, before the topic's events (QA s26: 5 s later).
            self.sink.opened()
        if self.own.failing:
            # Its own stream was interrupted (its client was told) and the topic, which is not,
            # brings the events from now on: the client hears it is back, once, before them.
            self.sink.back(self.own.back_message())
        buffered = list(self.buffer)
        self.buffer.clear()
        self.buffered = 0
        for each in buffered:  # (their bytes move from the hold to the socket's queue)
            self.buffered_bytes -= each.nbytes
            self._forward(each, each.nbytes)
        if stop:
            self.own.stop()

    def _probe_soon(self, spaced: bool = False) -> None:
        """Ask whether the replay has caught up (`_probe`), unless it is asked already (then
        again once answered) or the topic does not deliver now (its opening, or its coming back
        after an interruption, asks)."""
        if self.closed or self.handed_over or self.alone or not self.replaying:
            return
        if self.probing is not None:
            self.probe_again = True
            return
        if self.topic is not None and not _delivers(self.topic):
            return
        self.probing = asyncio.create_task(self._probe(spaced), name="catch-up-probe")

    async def _probe(self, spaced: bool) -> None:
        """Hand over once the log has no event of the filter after the last one sent.

        Gap-free: the topic's call was open (its consumer existed) and not interrupted before
        the log was asked, and the relay buffered its events since before that, so every event
        stored after the log's answer is the topic's, in the buffer or still to come; none
        stored before it is left to replay. Events the own stream sends meanwhile move `last`
        on, and the buffer is flushed after it."""
        try:
            while not (self.closed or self.handed_over):
                self.probe_again = False
                topic = self.topic
                if topic is not None and not _delivers(topic):
                    return  # its opening, or its coming back, asks again
                caught_up = await self.hub.nothing_after(self.spec, self.last)
                if self.closed or self.handed_over:
                    return
                if not caught_up:
                    if spaced:
                        self.probe_spacing = min(self.probe_spacing * 2, MAX_PROBE_SPACING)
                    if self.probe_again:
                        continue
                    return
                if topic is None:
                    # It left its topic while replaying (the live stream outran it): it reads on
                    # alone for good, now a reader at the live edge (the events service serves
                    # it from the filter's shared consumer), no longer a replay: its turn goes
                    # to the next.
                    self.alone = True
                    self.turn.done()
                    return
                if topic is not self.topic or not _delivers(topic):
                    continue  # it left (or the topic broke) meanwhile: ask again
                self._hand_over()
                return
        except grpc.aio.AioRpcError as exc:
            # The next heartbeat or short message asks again.
            log.debug("catch-up probe failed", code=exc.code().name, error=exc.details())
        finally:
            self.probing = None

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
            self._probe_soon()

    def _live(self, chunk: Chunk) -> None:
        if self.closed:
            return
        if self.handed_over:
            self._forward(chunk)
            return
        if not self.replaying:
            return  # waiting for its turn: its replay will bring these
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

    def _join_topic(self) -> None:
        self.relay = _Relay(self)
        self.topic = self.hub._topic(self.spec.topic_key)
        self.topic.add(self.relay)

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
        if self.own.task is None:
            self.turn.done()  # never started: a waiting turn leaves the queue
        self.own.stop()  # (a running turn is given back as its call ends)
        if self.probing is not None:
            self.probing.cancel()
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


class Turn:
    """One catch-up feed's turn to replay: "waiting", "running" or "done"."""

    __slots__ = ("ahead", "owner", "start", "state", "turns", "waited")

    def __init__(self, turns: Turns, owner: object, start: Callable[[], None]) -> None:
        self.turns = turns
        self.owner = owner
        self.start = start
        self.state = "new"
        self.waited = False  # it had to wait (its sink was told `queued`)
        self.ahead = 0  # turns waiting before it when it came

    def why(self) -> str:
        """Why it waits, for its client."""
        return self.turns.why(self)

    def done(self) -> None:
        """Give the turn back (a running one) or leave the queue (a waiting one); idempotent."""
        self.turns.done(self)


class Turns:
    """Turns to replay on a stream of one's own: at most `most` catch-up feeds at once in the
    gateway, `each` per socket (`owner`); the others wait, first come first served among those
    whose socket has a turn free (a socket at its own limit holds up no other socket)."""

    def __init__(self, most: int, each: int) -> None:
        self.most = most
        self.each = each
        self.running = 0
        self.peak = 0  # the most running at once since the gateway started
        self.waited = 0  # feeds that had to wait, since the gateway started
        self.by_owner: collections.Counter[object] = collections.Counter()
        self.waiting: collections.deque[Turn] = collections.deque()

    def take(self, owner: object, start: Callable[[], None]) -> Turn:
        """A turn for `owner`'s feed: running at once when one is free (the caller starts it),
        else waiting; `start` is called when a waiting one's turn comes."""
        turn = Turn(self, owner, start)
        if self._free(owner):
            self._run(turn)
        else:
            turn.state = "waiting"
            turn.waited = True
            turn.ahead = len(self.waiting)
            self.waiting.append(turn)
            self.waited += 1
        return turn

    def _free(self, owner: object) -> bool:
        return self.running < self.most and (owner is None or self.by_owner[owner] < self.each)

    def _run(self, turn: Turn) -> None:
        turn.state = "running"
        self.running += 1
        if turn.owner is not None:
            self.by_owner[turn.owner] += 1
        self.peak = max(self.peak, self.running)

    def done(self, turn: Turn) -> None:
        if turn.state == "waiting":
            turn.state = "done"
            self.waiting.remove(turn)
        elif turn.state == "running":
            turn.state = "done"
            self.running -= 1
            if turn.owner is not None:
                self.by_owner[turn.owner] -= 1
                if not self.by_owner[turn.owner]:
                    del self.by_owner[turn.owner]
            self._grant()
        else:
            turn.state = "done"

    def _grant(self) -> None:
        """Start the waiting turns that may run now, in order."""
        if not self.waiting or self.running >= self.most:
            return
        starting: list[Turn] = []
        kept: collections.deque[Turn] = collections.deque()
        for turn in self.waiting:
            if self._free(turn.owner):
                self._run(turn)
                starting.append(turn)
            else:
                kept.append(turn)
        self.waiting = kept
        for turn in starting:
            turn.start()

    def why(self, turn: Turn) -> str:
        if turn.owner is not None and self.by_owner[turn.owner] >= self.each:
            full = (
                f"this socket already replays {self.each} catch-up subscriptions at once, its "
                "most (WS_MAX_REPLAYS)"
            )
        else:
            full = (
                f"the gateway already replays {self.most} catch-up subscriptions at once, its "
                "most (GATEWAY_MAX_REPLAYS)"
            )
        return (
            f"waiting for its turn to replay: {full}, each a reader of the event log; "
            f"{turn.ahead} wait before it. Its replay starts as soon as one of them has caught "
            "up, from where it asked: no event is missed or sent twice"
        )


class Hub:
    """All topics of one gateway, and counters that prove the sharing."""

    def __init__(
        self,
        upstreams: Upstreams,
        events_per_message: int = EVENTS_PER_MESSAGE,
        batch_window: float = 0.0,
        limits: Settings | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.events_per_message = events_per_message
        # Seconds a topic holds events for its batching sinks (see `_Coalesced`); 0: none.
        self.batch_window = batch_window
        # GATEWAY_MAX_FILTERS, GATEWAY_MAX_REPLAYS, WS_MAX_REPLAYS (the defaults when None).
        self.limits = limits if limits is not None else Settings.model_construct()
        self.turns = Turns(self.limits.GATEWAY_MAX_REPLAYS, self.limits.WS_MAX_REPLAYS)
        self.topics: dict[tuple[tuple[str, ...], str], Topic] = {}
        self.calls_opened = 0
        self.calls_active = 0
        self.serialized = 0
        self.handovers = 0
        self.started = time.monotonic()

    def admit(self, spec: FeedSpec) -> None:
        """Refuse (RESOURCE_EXHAUSTED) a subscription whose filter would be one topic more
        than GATEWAY_MAX_FILTERS: each topic is a reader of the event log. One on a filter
        already followed, or of a run, is always admitted."""
        if spec.run or spec.topic_key in self.topics:
            return
        most = self.limits.GATEWAY_MAX_FILTERS
        if len(self.topics) >= most:
            raise GatewayError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"subscribe refused: the gateway already follows {most} distinct filters, its "
                "most (GATEWAY_MAX_FILTERS), each a reader of the event log; use a filter "
                "others use or a wider one (a subject pattern like runs/*, more types) and "
                "select on your side, or try again once others unsubscribe",
            )

    def feed(self, spec: FeedSpec, sink: Budgeted, owner: object = None) -> Feed:
        """Start delivering `spec` to `sink`; `owner`: its socket (whose catch-ups share its
        turns to replay, WS_MAX_REPLAYS). `admit` it first."""
        if spec.run:
            return RunFeed(self, spec, sink)
        if spec.since.kind == "now":
            return LiveFeed(self, spec, sink)
        return CatchUpFeed(self, spec, sink, owner)

    async def nothing_after(self, spec: FeedSpec, after: int) -> bool:
        """Whether the event log holds no event of `spec`'s filter after sequence `after` (or,
        when 0, from its `since`) now: a one-event ListEvents page."""
        request = events_pb2.ListEventsRequest(
            filter=events_pb2.EventFilter(types=list(spec.types), subject=spec.subject),
            page_size=1,
        )
        if after:
            request.after_sequence = after
        elif spec.since.kind == "time" and spec.since.time is not None:
            request.start_time.CopyFrom(spec.since.time)
        list_events = self.upstreams.callable("EventService", "ListEvents")
        reply = await list_events(request, timeout=PROBE_TIMEOUT)
        return not any(event.sequence > after for event in reply.events)

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
            "maxFilters": self.limits.GATEWAY_MAX_FILTERS,
            "maxFiltersPerSocket": self.limits.WS_MAX_FILTERS,
            "replays": self.turns.running,
            "replaysWaiting": len(self.turns.waiting),
            "replaysPeak": self.turns.peak,
            "replaysWaited": self.turns.waited,
            "maxReplays": self.limits.GATEWAY_MAX_REPLAYS,
            "maxReplaysPerSocket": self.limits.WS_MAX_REPLAYS,
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
