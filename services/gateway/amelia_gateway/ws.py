"""`/ws`: the socket protocol (see docs/gateway.md for the reference with examples).

Client -> server (JSON text messages):
    {"type": "subscribe", "id": "s1", "filter": {"types": ["run.*"], "subject": "runs/…"},
     "since": "now" | "beginning" | 42 | "2026-01-01T00:00:00Z"}
    {"type": "subscribe", "id": "r1", "run": "runs/…", "since": 42}
    ("batch": true on a subscribe: its events already queued go out together, see below)
    {"type": "unsubscribe", "id": "s1"}
    {"type": "ping"} / {"type": "pong"}

Server -> client:
    {"type": "welcome", "clientId": …}            once, first
    {"type": "subscribed" | "unsubscribed", "subscription": "s1"}
    {"type": "event", "subscription": "s1", "sequence": 42, "event": {…proto JSON Event…}}
    {"type": "events", "subscription": "s1", "events": [{"sequence": 42, "event": {…}}, …]}
                                                    (subscriptions with "batch": true)
    {"type": "end", "subscription": "r1"}          a run stream finished
    {"type": "error", "subscription": "s1" | null, "error": {code, message, details}, "final": bool}
    {"type": "status", "subscription": "s1", "status": "back", "message": …}
                                                    the stream is open again after a non-final error
    {"type": "ping", "time": …} every WS_HEARTBEAT_INTERVAL / {"type": "pong"}

Every socket has one bounded send queue (WS_SEND_QUEUE events and control messages, and
WS_SEND_QUEUE_BYTES bytes with what its catch-up subscriptions buffer) drained by its own task,
so one slow client never delays another: when its queue is full it is closed with 4008 and told
the sequence to resume from. Events are queued as (subscription, shared chunk): the
hub serialized them once for every socket (`hub.Chunk`), and only the small envelope differs per
subscription. A batching subscription sends a chunk (and the chunks queued behind it) as one
`events` message; a plain one sends one `event` message per event, back to back. A batching live
subscription's events come from the hub coalesced for up to WS_BATCH_WINDOW_MS (10 ms by default):
at a steady rate a socket message costs far more than an event in it, on both ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import time
import uuid
from typing import Any

import grpc
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.exceptions import InvalidState
from websockets.server import ServerProtocol

from amelia.v1 import agents_pb2, events_pb2
from amelia_common.auth import token_ok
from amelia_common.event_names import InvalidEventError, filter_tokens
from amelia_common.logging import get_logger
from amelia_common.names import CANONICAL_FORM, BadNameError, uuid_name
from amelia_gateway import auth
from amelia_gateway.errors import GatewayError, cut, internal, invalid, status_body
from amelia_gateway.hub import (
    CALLER_ERRORS,
    CHUNK_BYTES,
    EVENTS_PER_MESSAGE,
    CatchUpFeed,
    Chunk,
    Feed,
    FeedSpec,
    Since,
)
from amelia_gateway.json_input import read_json
from amelia_gateway.state import Gateway
from amelia_gateway.transcode import parse_into, read_timestamp

log = get_logger("amelia.gateway.ws")

# Close codes (documented in docs/gateway.md).
CLOSE_GOING_AWAY = 1001  # server shutting down: reconnect and resume
CLOSE_TRY_AGAIN_LATER = 1013  # WS_MAX_CONNECTIONS reached
CLOSE_HEARTBEAT_TIMEOUT = 4000  # nothing from the client for 3 heartbeat intervals
CLOSE_SLOW_CONSUMER = 4008  # send queue or byte budget full: resume from the sequence in the reason
CLOSE_UNAUTHORIZED = 4401  # missing or wrong API token

MAX_SUBSCRIPTIONS = 100
# Events in one `events` message of a subscription that asked for batches: as many as a chunk
# from the hub may hold, so a chunk always fits in one message.
MAX_BATCH_EVENTS = EVENTS_PER_MESSAGE
MAX_ID_LENGTH = 128
MISSED_HEARTBEATS = 3
# How long a run subscribe waits for the agents service to say whether the run exists.
RUN_CHECK_SECONDS = 5.0
# How long a subscribe with a `since` sequence waits for its stream to open (the service checks
# the sequence is not beyond the log's end) before it is answered `subscribed` all the same.
RESUME_CHECK_SECONDS = 5.0
# How long a close may wait for a client that does not read before the TCP connection is dropped.
CLOSE_GRACE = 10.0
# How long a socket's sender may wait on one message (the client does not read) before the socket
# counts as stalled: a catch-up whose live buffer outgrows the byte budget then closes it as slow
# instead of finishing on its own stream (`Connection.stalled`).
STALL_SECONDS = 1.0
# What a paced stream (a catch-up's replay, a run subscription) keeps queued ahead of its socket:
# it reads its next upstream message only once the queue holds at most this many bytes (and at
# most half WS_SEND_QUEUE_BYTES, half WS_SEND_QUEUE events), so a replay whose client stopped
# reading holds this and one message (hub.CHUNK_BYTES, or one event), not half the socket's byte
# budget (8 MiB of 16). One message is already more than a reading client takes while the next
# is read from the events service (a local call), so it is not slowed (docs/gateway.md, "Memory
# per client"). Live events are not paced: they may fill the whole budget before it closes.
PACED_BYTES = CHUNK_BYTES

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# A sequence given as text: ASCII digits only (str.isdigit also takes '²', which int() refuses),
# at most 20 (2^64 has 20).
_SEQUENCE = re.compile(r"[0-9]{1,20}")


class ProtocolError(Exception):
    """A client message the gateway cannot act on; answered with an error message."""


def _transport_of(send: Send) -> asyncio.Transport | None:
    """The connection's transport when the server exposes it (uvicorn does), to drop a stuck peer.

    A close frame cannot reach a client that stopped reading; without this the TCP connection
    (and its write buffer) would stay until the peer goes away.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    return transport if isinstance(transport, asyncio.Transport) else None


class _Burst:
    """Several text messages of one socket written with one system call, where the server lets
    us: uvicorn's websockets-sansio protocol (the ASGI `send` belongs to it) frames a message with
    its sans-I/O connection and writes it to the transport, one `send()` system call per message:
    half the gateway's CPU for plain subscriptions, one message per event (py-spy, 100 sockets).
    This does what its `send` does for each message, with one write for all of them. Under
    another server there is no burst: the ASGI send, a message at a time.
    """

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    @classmethod
    def of(cls, send: Send) -> _Burst | None:
        protocol = getattr(send, "__self__", None)
        if (
            isinstance(getattr(protocol, "conn", None), ServerProtocol)
            and isinstance(getattr(protocol, "writable", None), asyncio.Event)
            and isinstance(getattr(protocol, "transport", None), asyncio.Transport)
            and hasattr(protocol, "close_sent")
            and hasattr(protocol, "disconnected")
        ):
            return cls(protocol)
        return None

    async def send(self, texts: list[str]) -> None:
        protocol = self.protocol
        await protocol.writable.wait()  # the transport's flow control, as uvicorn's send waits
        if protocol.disconnected or protocol.close_sent:
            raise OSError("the websocket is closed")
        connection: ServerProtocol = protocol.conn
        try:
            for text in texts:
                connection.send_text(text.encode())
        except InvalidState:
            raise OSError("the websocket is closed") from None
        protocol.transport.write(b"".join(connection.data_to_send()))


class Subscription:
    """One subscription of a socket: the sink the hub pushes to."""

    def __init__(self, connection: Connection, sub_id: Any, spec: FeedSpec) -> None:
        self.connection = connection
        self.id = sub_id
        self.spec = spec
        self.prefix = '{"type":"event","subscription":' + json.dumps(sub_id) + ',"sequence":'
        self.batch_prefix = '{"type":"events","subscription":' + json.dumps(sub_id) + ',"events":['
        self.batch = spec.batch
        self.last_queued = spec.since.sequence if spec.since.kind == "after" else 0
        self.last_sent = self.last_queued
        self.feed: Feed | None = None
        self.announced = False
        # Done once the subscribe is answered: `subscribed`, or refused by its stream (`fail`).
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def announce(self) -> None:
        """Send `subscribed`, once, before anything else of the subscription."""
        if not self.announced:
            self.announced = True
            self.connection.send_control({"type": "subscribed", "subscription": self.id})
        self.settle()

    def settle(self) -> None:
        """Nothing more to wait for before the subscribe is answered."""
        if not self.answered.done():
            self.answered.set_result(None)

    def opened(self) -> None:
        self.announce()

    async def answer(self, seconds: float) -> None:
        """Answer a subscribe that `FeedSpec.resumes` once its stream opened (`subscribed`) or
        was refused (a final `error` and no `subscribed`: a `since` beyond the log's end, as
        `/v1/events:stream` answers 400). A stream that says neither within `seconds` (its
        service down or slow) is subscribed, and reports its trouble as every stream does."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.shield(self.answered)
        if not self.answered.done():
            self.announce()

    def push(self, chunk: Chunk, held: int = 0) -> None:
        self.announce()  # (a no-op once sent: no event of the subscription goes before it)
        if self.connection.enqueue((self, chunk), len(chunk), held):
            self.last_queued = chunk.last

    async def room(self) -> None:
        await self.connection.room()

    def fits(self, nbytes: int) -> bool:
        return self.connection.fits(nbytes)

    def hold(self, nbytes: int) -> None:
        self.connection.hold(nbytes)

    def stalled(self) -> bool:
        return self.connection.stalled()

    def overflow(self) -> None:
        self.connection.over_budget()

    def fail(self, error: GatewayError, final: bool) -> None:
        """A final error that is the request's fault (CALLER_ERRORS: a `since` beyond the log's
        end) refuses a subscribe not yet answered; any other comes after `subscribed`."""
        caller = error.code in CALLER_ERRORS
        if not (final and caller):
            self.announce()
        message = error.message
        if final and not caller:
            message = self._broken(message)
        self.connection.send_control(
            {
                "type": "error",
                "subscription": self.id,
                "error": status_body(error.code, message, details=error.details),
                "final": final,
            }
        )
        if final:
            self.connection.forget(self)  # (which settles the subscribe's answer)

    def _broken(self, why: str) -> str:
        """A final error that is not the request's fault: what ended, why, and where to resume
        (the events queued before this message are all sent before it)."""
        what = f"the stream of {self.spec.run}" if self.spec.run else "this subscription's stream"
        if self.last_queued:
            resume = (
                f'subscribe again with "since": {self.last_queued} to resume after the last '
                "event sent"
            )
        else:
            resume = "no event was sent: subscribe again to retry"
        return f"{what} failed and has ended: {why}; {resume}"

    def end(self) -> None:
        self.announce()
        self.connection.send_control({"type": "end", "subscription": self.id})
        self.connection.forget(self)

    def back(self, message: str) -> None:
        """After an `error` with `final: false`: the stream is open again (clear the notice)."""
        self.status("back", message)

    def queued(self, message: str) -> None:
        """The catch-up waits for its turn to replay (`hub.Turns`): `subscribed` now (its stream
        checks a `since` sequence when it opens, later: a final error if it is beyond the log's
        end), then why nothing comes yet."""
        self.announce()
        self.status("queued", message)

    def started(self, message: str) -> None:
        """After `queued`: its replay starts."""
        self.status("started", message)

    def status(self, status: str, message: str) -> None:
        self.connection.send_control(
            {"type": "status", "subscription": self.id, "status": status, "message": message}
        )


Item = str | tuple[Subscription, Chunk]


class Connection:
    """One accepted socket: its queue, sender, heartbeat and subscriptions."""

    def __init__(self, gateway: Gateway, websocket: WebSocket, client_id: str, send: Send) -> None:
        self.gateway = gateway
        self.ws = websocket
        self.id = client_id
        self.transport = _transport_of(send)
        # The raw ASGI send: what goes through it is a text message of an open socket, which
        # needs none of starlette's state checks (its close goes through `self.ws`).
        self._send = send
        self._burst = _Burst.of(send)
        self.queue: collections.deque[Item] = collections.deque()
        self.limit = gateway.settings.WS_SEND_QUEUE
        self._queued = 0  # events and control messages in `queue`
        self.budget = gateway.settings.WS_SEND_QUEUE_BYTES
        self._bytes = 0  # bytes of text in `queue`
        # A paced stream waits while the queue holds more (`room`).
        self.paced_bytes = min(self.budget // 2, PACED_BYTES)
        self._held = 0  # bytes the subscriptions' catch-up feeds buffer (`hold`)
        self._waiting: asyncio.Future[None] | None = None  # the sender, for something to send
        self.free_at = time.monotonic()  # when the sender last took a message (or had none)
        self._room: asyncio.Future[None] | None = None  # feeds, for the queue to drain
        self.subscriptions: dict[str, Subscription] = {}
        self.closing = False
        self.close_code: int | None = None
        self.last_heard = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._close_task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def queued_bytes(self) -> int:
        """Bytes the socket holds: its send queue's and its catch-up feeds' buffers."""
        return self._bytes + self._held

    # -- sending -----------------------------------------------------------------------------

    def fits(self, nbytes: int) -> bool:
        """Whether `nbytes` more keep the socket within its byte budget: within it, or taken
        whole while at most half of it is used (as a paced replay's next message is)."""
        used = self._bytes + self._held
        return used + nbytes <= self.budget or used <= self.budget // 2

    def enqueue(self, item: Item, size: int = 1, held: int = 0) -> bool:
        """Queue `size` events (or a control message) without waiting; a full queue closes the
        socket as a slow consumer. A chunk is taken whole while the queue is not yet full, so the
        queue holds at most WS_SEND_QUEUE - 1 + hub.events_per_message(WS_SEND_QUEUE) events;
        and while it fits the byte budget (`fits`), so the socket holds at most
        WS_SEND_QUEUE_BYTES, or half of it and one upstream message (at most hub.CHUNK_BYTES
        or one event).

        `held`: the item is (part of) a chunk of `held` bytes a catch-up feed of the socket
        buffered (`hold`), handed over to the queue: it adds nothing to what the socket holds,
        and is queued whatever the limits.

        Once the close is decided (`_close_task`), nothing more is queued: the hub may push many
        events in one go (one per subscription, a catch-up's buffer), and the socket is closed,
        counted and logged once, not once per event.
        """
        self._held -= held
        if self.closing or self._close_task is not None:
            return False
        nbytes = len(item) if isinstance(item, str) else item[1].nbytes
        if not held:
            if self._queued >= self.limit:
                self._slow("send queue full")
                return False
            if not self.fits(nbytes):
                self.over_budget()
                return False
        self.queue.append(item)
        self._queued += size
        self._bytes += nbytes
        self._high_water()
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)
        return True

    def hold(self, nbytes: int) -> None:
        """A catch-up feed of the socket buffers `nbytes` more (releases them when negative);
        it asked `fits` first."""
        self._held += nbytes
        if nbytes > 0:
            self._high_water()

    def _high_water(self) -> None:
        used = self._bytes + self._held
        if used > self.gateway.queued_bytes_peak:
            self.gateway.queued_bytes_peak = used

    def stalled(self) -> bool:
        """Whether messages wait while the sender has been stuck on one (the client does not
        read) for STALL_SECONDS."""
        return (
            bool(self.queue)
            and self._waiting is None
            and time.monotonic() - self.free_at > STALL_SECONDS
        )

    def over_budget(self) -> None:
        """More than the socket's byte budget would be held for it: closed as a slow consumer."""
        if not self.closing and self._close_task is None:
            self._slow(f"over its budget of {self.budget} bytes queued")

    def _take(self) -> Item:
        item = self.queue.popleft()
        if isinstance(item, str):
            self._queued -= 1
            self._bytes -= len(item)
        else:
            self._queued -= len(item[1])
            self._bytes -= item[1].nbytes
        if self._queued <= self.limit // 2 and self._bytes <= self.paced_bytes:
            self._make_room()
        return item

    def _make_room(self) -> None:
        if self._room is not None:
            if not self._room.done():
                self._room.set_result(None)
            self._room = None

    async def room(self) -> None:
        """Wait until at most half the send queue's events are used and it holds at most
        `paced_bytes` (or the socket is closing)."""
        while (
            (self._queued > self.limit // 2 or self._bytes > self.paced_bytes)
            and not self.closing
            and self._close_task is None
        ):
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)

    def send_control(self, message: dict[str, Any]) -> None:
        self.enqueue(json.dumps(message, separators=(",", ":"), ensure_ascii=False))

    def _slow(self, why: str) -> None:
        self.gateway.counters["wsClosedSlow"] += 1
        events = [s.last_sent for s in self.subscriptions.values() if not s.spec.run]
        resume = min(events) if events else 0
        log.warning(
            "closing slow websocket",
            client=self.id,
            why=why,
            queued=self._queued,
            queued_bytes=self._bytes + self._held,
            resume_from=resume,
        )
        self.close_soon(CLOSE_SLOW_CONSUMER, f"slow consumer: {why}; resume from sequence {resume}")

    async def _send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def _sender(self) -> None:
        queue = self.queue
        while True:
            self.free_at = time.monotonic()
            if not queue:
                self._waiting = asyncio.get_running_loop().create_future()
                await self._waiting
                self._waiting = None
                continue
            item = self._take()
            if isinstance(item, str):
                await self._send_text(item)
                continue
            subscription, chunk = item
            if not subscription.batch:
                prefix = subscription.prefix
                if self._burst is not None and len(chunk) > 1:
                    await self._burst.send([prefix + tail for tail in chunk.tails()])
                    subscription.last_sent = chunk.last
                    continue
                for sequence, tail in zip(chunk.sequences, chunk.tails(), strict=True):
                    await self._send_text(prefix + tail)
                    subscription.last_sent = sequence
                    self.free_at = time.monotonic()
                continue
            # A batching subscription: its chunks already queued right behind this one go in the
            # same message (none is waited for); anything else is sent next.
            items, count, nbytes = [chunk.items()], len(chunk), chunk.nbytes
            while queue:
                following = queue[0]
                if (
                    isinstance(following, str)
                    or following[0] is not subscription
                    or count + len(following[1]) > MAX_BATCH_EVENTS
                    or nbytes + following[1].nbytes > CHUNK_BYTES
                ):
                    break
                chunk = following[1]
                self._take()
                items.append(chunk.items())
                count += len(chunk)
                nbytes += chunk.nbytes
            await self._send_text(subscription.batch_prefix + ",".join(items) + "]}")
            subscription.last_sent = chunk.last

    async def _heartbeat(self) -> None:
        interval = self.gateway.settings.WS_HEARTBEAT_INTERVAL
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self.last_heard > interval * MISSED_HEARTBEATS:
                self.close_soon(
                    CLOSE_HEARTBEAT_TIMEOUT,
                    f"heartbeat timeout: nothing received for {interval * MISSED_HEARTBEATS:g}s",
                )
                return
            self.send_control({"type": "ping", "time": time.time()})

    # -- closing -----------------------------------------------------------------------------

    def close_soon(self, code: int, reason: str) -> None:
        """Close from code that must not wait (the hub's push path)."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self.close(code, reason))

    async def close(self, code: int, reason: str) -> None:
        """Detach from the hub, drop what is queued, send the close frame, drop a stuck peer."""
        if self.closing:
            if self._close_task is not None and self._close_task is not asyncio.current_task():
                await asyncio.shield(self._close_task)
            return
        self.closing = True
        self.close_code = code
        self.detach()
        await self._stop_tasks()
        self.queue.clear()
        self._queued = 0
        self._bytes = 0
        self._make_room()
        if self.ws.application_state != WebSocketState.CONNECTED:
            return
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await self.ws.close(code, reason[:120])
        except TimeoutError:
            log.warning("dropping a websocket that does not read", client=self.id)
            if self.transport is not None:
                self.transport.abort()
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def detach(self) -> None:
        for subscription in list(self.subscriptions.values()):
            self.forget(subscription)

    def forget(self, subscription: Subscription) -> None:
        if self.subscriptions.get(_key(subscription.id)) is subscription:
            del self.subscriptions[_key(subscription.id)]
        if subscription.feed is not None:
            subscription.feed.close()
            subscription.feed = None
        subscription.settle()

    # -- receiving ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket until the client or the server closes it."""
        self._tasks = [
            asyncio.create_task(self._guard(self._sender()), name=f"ws-send-{self.id}"),
            asyncio.create_task(self._guard(self._heartbeat()), name=f"ws-heartbeat-{self.id}"),
        ]
        settings = self.gateway.settings
        self.send_control(
            {
                "type": "welcome",
                "clientId": self.id,
                "protocol": auth.PROTOCOL,
                "heartbeatInterval": settings.WS_HEARTBEAT_INTERVAL,
                "sendQueue": settings.WS_SEND_QUEUE,
                "sendQueueBytes": settings.WS_SEND_QUEUE_BYTES,
                "maxSubscriptions": MAX_SUBSCRIPTIONS,
                "maxFilters": self.gateway.settings.WS_MAX_FILTERS,
                "maxReplays": self.gateway.settings.WS_MAX_REPLAYS,
            }
        )
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                self.last_heard = time.monotonic()
                if self.closing:
                    continue
                await self._handle(message.get("text"), message.get("bytes"))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.closing = True
            self.detach()
            await self._stop_tasks()
            if self._close_task is not None and self._close_task is not asyncio.current_task():
                self._close_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._close_task

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except (WebSocketDisconnect, OSError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("websocket task failed", client=self.id)
            self.close_soon(1011, "internal error")

    async def _handle(self, text: str | None, data: bytes | None) -> None:
        """Act on one client message; whatever is wrong with it is answered with an `error`.

        No message can end the socket: one the gateway fails on unexpectedly is logged and
        answered as INTERNAL, and the socket goes on. Messages are handled one at a time, in
        order (a run subscribe waits for its run's check, `_check_run`).
        """
        message_id: Any = None
        try:
            if text is None:
                raise ProtocolError("send JSON text messages, not binary")
            message = read_json(text, "message")
            if not isinstance(message, dict):
                raise ProtocolError("a message must be a JSON object with a 'type'")
            message_id = message.get("id")
            kind = message.get("type")
            if isinstance(kind, str) and kind in _FIELDS:
                _refuse_unknown_fields(kind, message)
            if kind == "subscribe":
                await self._subscribe(message)
            elif kind == "unsubscribe":
                self._unsubscribe(message)
            elif kind == "ping":
                self.send_control({"type": "pong", "time": time.time()})
            elif kind == "pong":
                pass
            elif kind is None:
                raise ProtocolError(
                    "message has no type; expected one of subscribe, unsubscribe, ping, pong"
                )
            else:
                raise ProtocolError(
                    f"unknown message type {_shown(kind)}: use subscribe, unsubscribe, ping or pong"
                )
        except ProtocolError as exc:
            self._refuse(message_id, invalid(str(exc)))
        except GatewayError as exc:
            self._refuse(message_id, exc)
        except Exception:
            log.exception("websocket message failed", client=self.id)
            self._refuse(message_id, internal(f"client {self.id}"))

    def _refuse(self, message_id: Any, error: GatewayError) -> None:
        """Answer a refused message. `final` is about the subscription the error names: true
        when no subscription of that id runs (the refused subscribe never started), false when
        one does and goes on (a second subscribe with its id): a client that drops a subscription
        on a final error must not drop a live one."""
        valid = _valid_id(message_id)
        self.send_control(
            {
                "type": "error",
                "subscription": message_id if valid else None,
                "error": status_body(error.code, error.message, details=error.details),
                "final": not (valid and _key(message_id) in self.subscriptions),
            }
        )

    async def _subscribe(self, message: dict[str, Any]) -> None:
        sub_id = message.get("id")
        if not _valid_id(sub_id):
            raise ProtocolError(
                f"subscribe needs an 'id': a string (1-{MAX_ID_LENGTH} chars) or an integer"
            )
        if _key(sub_id) in self.subscriptions:
            raise ProtocolError(
                f"subscribe refused: subscription {_shown(sub_id)} already exists and goes on;"
                " use another id, or unsubscribe it first"
            )
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise GatewayError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"at most {MAX_SUBSCRIPTIONS} subscriptions per socket: unsubscribe one first",
            )
        spec = parse_spec(message)
        if spec.run:
            await self._check_run(spec.run)
            if self.closing:
                return
        self._admit(spec)
        subscription = Subscription(self, sub_id, spec)
        self.subscriptions[_key(sub_id)] = subscription
        if not spec.resumes:
            subscription.announce()
        feed = self.gateway.hub.feed(spec, subscription, self)
        subscription.feed = feed
        if spec.resumes and not (isinstance(feed, CatchUpFeed) and feed.waiting):
            # (One waiting for its turn to replay was answered already: `Subscription.queued`.)
            await subscription.answer(RESUME_CHECK_SECONDS)

    def _admit(self, spec: FeedSpec) -> None:
        """Refuse (RESOURCE_EXHAUSTED) a filter subscription whose filter would be one too many:
        more distinct filters than WS_MAX_FILTERS on this socket, or than GATEWAY_MAX_FILTERS in
        the gateway (each distinct filter is a reader of the event log, `hub.Topic`)."""
        if spec.run:
            return
        filters = {s.spec.topic_key for s in self.subscriptions.values() if not s.spec.run}
        most = self.gateway.settings.WS_MAX_FILTERS
        try:
            if spec.topic_key not in filters and len(filters) >= most:
                raise GatewayError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"subscribe refused: the subscriptions of this socket already have {most} "
                    "distinct filters, its most (WS_MAX_FILTERS), each a reader of the event "
                    "log; subscribe with a filter it has, unsubscribe one first, or use a wider "
                    "filter (a subject pattern like runs/*, more types) and select on your side",
                )
            self.gateway.hub.admit(spec)
        except GatewayError:
            self.gateway.counters["wsRefusedFilters"] += 1
            raise

    async def _check_run(self, run: str) -> None:
        """Refuse a run subscription before `subscribed` when the agents service says the run
        does not exist (GetRun: NOT_FOUND, as the request's fault). Any other failure (the
        service down or slow) is left to the stream, which reports it and retries."""
        get_run = self.gateway.upstreams.callable("AgentService", "GetRun")
        try:
            await get_run(agents_pb2.GetRunRequest(name=run), timeout=RUN_CHECK_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in CALLER_ERRORS:
                raise self.gateway.upstreams["AgentService"].error(exc) from None

    def _unsubscribe(self, message: dict[str, Any]) -> None:
        sub_id = message.get("id")
        if sub_id is None:
            raise ProtocolError("unsubscribe needs the id of a subscription")
        subscription = self.subscriptions.get(_key(sub_id)) if _valid_id(sub_id) else None
        if subscription is None:
            raise ProtocolError(f"no subscription {_shown(sub_id)}")
        self.forget(subscription)
        self.send_control({"type": "unsubscribed", "subscription": sub_id})


# The fields each client message may have: others are refused, as unknown fields of a request
# body are (a typo is an error, not an option silently ignored). A pong may echo the ping's time.
_FIELDS = {
    "subscribe": ("type", "id", "filter", "run", "since", "batch"),
    "unsubscribe": ("type", "id"),
    "ping": ("type",),
    "pong": ("type", "time"),
}


def _refuse_unknown_fields(kind: str, message: dict[str, Any]) -> None:
    unknown = [key for key in message if key not in _FIELDS[kind]]
    if unknown:
        shown = ", ".join(_shown(key) for key in unknown)
        raise ProtocolError(
            cut(f"unknown field(s) in {kind}: {shown}; its fields are {', '.join(_FIELDS[kind])}")
        )


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def _key(value: Any) -> str:
    return json.dumps(value)


def _shown(value: Any) -> str:
    """A client's value quoted in an error message, cut short the way every gateway error is: a
    string quoted, anything else as the JSON it came as (`true`, `null`, never Python's)."""
    if isinstance(value, str):
        return cut(repr(value), 60)
    try:
        return cut(json.dumps(value, ensure_ascii=False), 60)
    except (TypeError, ValueError):
        return cut(repr(value), 60)


def parse_since(value: Any, *, run: bool) -> Since:
    if value is None:
        return Since("beginning") if run else Since("now")
    if isinstance(value, bool):
        raise ProtocolError("'since' must be a sequence, a time, 'now' or 'beginning'")
    if isinstance(value, int) or (isinstance(value, str) and _SEQUENCE.fullmatch(value)):
        sequence = int(value)
        if sequence < 0 or sequence >= 2**64:
            raise ProtocolError("'since' sequence must be between 0 and 2^64-1")
        return Since("after", sequence=sequence) if sequence else Since("beginning")
    if value == "beginning":
        return Since("beginning")
    if value == "now":
        if run:
            raise ProtocolError("a run subscription replays the run: use a sequence or 'beginning'")
        return Since("now")
    if isinstance(value, str):
        if run:
            raise ProtocolError("a run subscription starts at a sequence or 'beginning'")
        if not value[:1].isdigit():
            raise ProtocolError(
                f"'since' {_shown(value)} is not a sequence, an RFC 3339 time, 'now' or 'beginning'"
            )
        # A time by the rules of /v1/events:stream's `startTime` (a time zone required, its
        # offset within ±23:59): the same function, the same message.
        try:
            return Since("time", time=read_timestamp(value, "since"))
        except GatewayError as exc:
            raise ProtocolError(exc.message) from None
    raise ProtocolError("'since' must be a sequence, a time, 'now' or 'beginning'")


def parse_run_name(run: Any) -> str:
    """`run`, when it is a name the agents service takes (`runs/<uuid>`, read by the same
    `amelia_common.names.uuid_name`): a malformed one is refused before `subscribed`."""
    try:
        uuid_name(run if isinstance(run, str) else "", "runs")
    except BadNameError:
        shown = repr(run) if isinstance(run, str) else _shown(run)
        raise ProtocolError(
            cut(f"'run' must be a run name like 'runs/<uuid>' with {CANONICAL_FORM}, got {shown}")
        ) from None
    return str(run)


def parse_spec(message: dict[str, Any]) -> FeedSpec:
    batch = message.get("batch", False)
    if not isinstance(batch, bool):
        raise ProtocolError("'batch' must be true or false")
    run = message.get("run")
    event_filter = message.get("filter")
    if run is not None:
        if event_filter is not None:
            raise ProtocolError("give either 'filter' or 'run', not both")
        return FeedSpec(
            run=parse_run_name(run), since=parse_since(message.get("since"), run=True), batch=batch
        )
    # The filter read as /v1/events:stream reads its EventFilter from JSON (proto JSON: a list
    # of strings for `types`, a string `subject`, no other field), with the same messages.
    request = events_pb2.StreamEventsRequest()
    try:
        parse_into(request, {"filter": event_filter}, "subscribe")
    except GatewayError as exc:
        raise ProtocolError(exc.message) from None
    types, subject = list(request.filter.types), request.filter.subject
    if not all(types):
        raise ProtocolError("'filter.types' must be a list of type patterns like 'run.*'")
    try:
        filter_tokens(types, subject)  # the events service's own check
    except InvalidEventError as exc:
        raise ProtocolError(cut(f"'filter': {exc}")) from None
    return FeedSpec(
        types=tuple(sorted(set(types))),
        subject=subject,
        since=parse_since(message.get("since"), run=False),
        batch=batch,
    )


async def serve(gateway: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """The `/ws` endpoint: refuse (with a close code) or accept, then run the protocol."""
    websocket = WebSocket(scope, receive=receive, send=send)
    subprotocols: list[str] = list(scope.get("subprotocols") or [])
    subprotocol = auth.chosen_subprotocol(subprotocols)
    token = auth.header_token(websocket.headers) or auth.protocol_token(subprotocols)[0]
    settings = gateway.settings
    refusal: tuple[int, str] | None = None
    if gateway.stopping.is_set():
        refusal = (CLOSE_GOING_AWAY, "server shutting down; reconnect and resume later")
    elif not token_ok(gateway.token, token):
        gateway.counters["wsRefusedAuth"] += 1
        refusal = (
            CLOSE_UNAUTHORIZED,
            "unauthorized: send 'Authorization: Bearer <token>' or subprotocol 'bearer.<token>'",
        )
    elif len(gateway.connections) >= settings.WS_MAX_CONNECTIONS:
        gateway.counters["wsRefusedFull"] += 1
        refusal = (
            CLOSE_TRY_AGAIN_LATER,
            f"too many connections: this gateway allows {settings.WS_MAX_CONNECTIONS}",
        )
    given = websocket.headers.get("x-client-id", "")
    client_id = given if _CLIENT_ID.match(given) else uuid.uuid4().hex
    if refusal is not None:
        await websocket.accept(subprotocol=subprotocol)
        await websocket.close(*refusal)
        return
    if client_id in gateway.connections:
        client_id = uuid.uuid4().hex
    connection = Connection(gateway, websocket, client_id, send)
    # Registered before the first await, so concurrent handshakes cannot exceed the limit.
    gateway.connections[client_id] = connection
    gateway.counters["wsAccepted"] += 1
    try:
        await websocket.accept(subprotocol=subprotocol)
        await connection.run()
    except (WebSocketDisconnect, OSError):
        pass
    finally:
        gateway.connections.pop(client_id, None)
        connection.detach()
