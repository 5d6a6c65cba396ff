"""The gateway bench's subscribers, in processes of their own (bench/gateway.py drives them).

100 sockets in the benchmark's one Python thread measured that thread, not the gateway: reading
and decoding 100 sockets' messages took more CPU than the gateway spent sending them. Each
process here holds a share of a row's subscribers (WebSockets on the gateway, or StreamEvents
calls on the events service), decodes every message with orjson, counts each subscriber's
events, checks that each got every event of the phase once, in the log's order (`data.p` names
the phase, `data.i` numbers its events from 0; the stream sequences must go up) and, while
measuring latency, takes receive time minus the publish time the event carries (`data.t`: the
publisher's time.time(), the same clock on the same machine), leaving out the phase's first
`skip` events (its warm-up). (The WebSocket rows use bench/_ws_clients.mjs when Node can.)

The parent sends commands over a pipe and gets one answer per command:
    ("reset", Phase)  -> True    count afresh up to `phase.target` events each
    ("status",)       -> bool    whether every subscriber has its target
    ("wait", timeout) -> Report  once every subscriber has it (or its socket closed), or after
                                 `timeout`
    ("close",)        -> True    and the process ends
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc
import orjson
import websockets

from amelia.v1 import events_pb2, events_pb2_grpc

WEBSOCKET = "websocket"
WEBSOCKET_BATCHED = "websocket-batched"
STREAM_EVENTS = "stream-events"
STREAM_EVENTS_BATCHED = "stream-events-batched"  # max_events_per_message=PER_MESSAGE
PER_MESSAGE = 256


@dataclass(frozen=True)
class Phase:
    """What the subscribers count next: `target` events of phase `name` each, numbered from 0;
    latency of those numbered `skip` and up when `measure`."""

    name: str = ""
    target: int = 0
    measure: bool = False
    skip: int = 0


@dataclass
class Report:
    """What one process's subscribers received since the last reset."""

    done: bool
    counts: list[int]
    lasts: list[float]  # time.time() of each subscriber's last event
    latencies: list[float] = field(default_factory=list)  # seconds, publish -> decoded
    gapped: int = 0  # subscribers whose events came with a gap, a repeat or out of order
    closed: list[str] = field(default_factory=list)  # why sockets closed meanwhile
    messages: int = 0  # socket (or gRPC) messages that carried events, all subscribers together


class Receiver:
    """Counts one subscriber's events of the current phase, checks their order, takes latency."""

    def __init__(self) -> None:
        self.phase = Phase()
        self.count = 0
        self.last = 0.0
        self.gapped = False
        self.closed = ""
        self.latencies: list[float] = []
        self.messages = 0
        self.seen = bytearray()
        self.sequence = 0
        self.done = asyncio.Event()

    def arrived(self, sequence: int, data: dict[str, Any]) -> None:
        phase = self.phase
        if data.get("p") != phase.name:
            return  # a straggler of an earlier phase (a warm-up event)
        now = time.time()
        number = int(data["i"])
        if sequence <= self.sequence or number >= len(self.seen) or self.seen[number]:
            self.gapped = True  # out of the log's order, repeated, or not of this phase
        else:
            self.seen[number] = 1
        self.sequence = sequence
        self.count += 1
        self.last = now
        if phase.measure and number >= phase.skip:
            self.latencies.append(now - data["t"])
        if phase.target and self.count >= phase.target:
            self.done.set()

    def ended(self, why: str) -> None:
        self.closed = why
        self.done.set()

    def reset(self, phase: Phase) -> None:
        self.phase = phase
        self.count = 0
        self.gapped = False
        self.latencies = []
        self.messages = 0
        self.seen = bytearray(phase.target)
        self.done = asyncio.Event()
        if self.closed:
            self.done.set()


Closer = Callable[[], Awaitable[None]]


async def _websockets(url: str, subject: str, receivers: list[Receiver], batch: bool) -> Closer:
    async def open_one() -> Any:
        ws = await websockets.connect(url, open_timeout=60, max_size=None, compression=None)
        await ws.recv()  # welcome
        subscribe: dict[str, Any] = {"type": "subscribe", "id": "b", "filter": {"subject": subject}}
        if batch:
            subscribe["batch"] = True
        await ws.send(json.dumps(subscribe))
        reply = orjson.loads(await ws.recv())
        assert reply["type"] == "subscribed", reply
        return ws

    sockets: list[Any] = []
    for start in range(0, len(receivers), 25):
        sockets += await asyncio.gather(*(open_one() for _ in receivers[start : start + 25]))

    async def consume(ws: Any, receiver: Receiver) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                async for text in ws:
                    message = orjson.loads(text)
                    kind = message["type"]
                    if kind == "events":
                        receiver.messages += 1
                        for item in message["events"]:
                            receiver.arrived(item["sequence"], item["event"]["data"])
                    elif kind == "event":
                        receiver.messages += 1
                        receiver.arrived(message["sequence"], message["event"]["data"])
                    elif kind == "ping":  # the gateway's heartbeat: it closes a silent client
                        await ws.send('{"type":"pong"}')
            except websockets.ConnectionClosed as exc:
                close = exc.rcvd
                receiver.ended(f"closed {close.code}: {close.reason}" if close else "dropped")

    tasks = [asyncio.create_task(consume(ws, r)) for ws, r in zip(sockets, receivers, strict=True)]

    async def close() -> None:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)

    return close


async def _stream_events(
    address: str, subject: str, receivers: list[Receiver], per_message: int
) -> Closer:
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, len(receivers) // 25))]
    calls = []
    tasks = []

    def arrived(receiver: Receiver, event: events_pb2.Event) -> None:
        fields = event.data.fields
        if "p" in fields:
            receiver.arrived(
                event.sequence,
                {
                    "p": fields["p"].string_value,
                    "i": fields["i"].number_value,
                    "t": fields["t"].number_value,
                },
            )

    async def consume(call: Any, receiver: Receiver) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                async for response in call:
                    receiver.messages += 1
                    for event in response.events if per_message > 1 else (response.event,):
                        arrived(receiver, event)
            except grpc.aio.AioRpcError as exc:
                receiver.ended(f"{exc.code().name}: {exc.details()}")

    request = events_pb2.StreamEventsRequest(
        filter=events_pb2.EventFilter(subject=subject), max_events_per_message=per_message
    )
    for i, receiver in enumerate(receivers):
        call = events_pb2_grpc.EventServiceStub(channels[i % len(channels)]).StreamEvents(request)
        calls.append(call)
        tasks.append(asyncio.create_task(consume(call, receiver)))

    async def close() -> None:
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()

    return close


async def _serve(pipe: Connection, kind: str, target: str, subject: str, count: int) -> None:
    receivers = [Receiver() for _ in range(count)]
    if kind in (STREAM_EVENTS, STREAM_EVENTS_BATCHED):
        per_message = PER_MESSAGE if kind == STREAM_EVENTS_BATCHED else 0
        close = await _stream_events(target, subject, receivers, per_message)
    else:
        close = await _websockets(target, subject, receivers, batch=kind == WEBSOCKET_BATCHED)
    pipe.send(True)  # open
    try:
        while True:
            command = await asyncio.to_thread(pipe.recv)
            if command[0] == "reset":
                for r in receivers:
                    r.reset(command[1])
                pipe.send(True)
            elif command[0] == "status":
                pipe.send(all(r.done.is_set() for r in receivers))
            elif command[0] == "wait":
                done = True
                try:
                    async with asyncio.timeout(command[1]):
                        await asyncio.gather(*(r.done.wait() for r in receivers))
                except TimeoutError:
                    done = False
                pipe.send(
                    Report(
                        done,
                        [r.count for r in receivers],
                        [r.last for r in receivers],
                        [x for r in receivers for x in r.latencies],
                        sum(r.gapped for r in receivers),
                        [r.closed for r in receivers if r.closed],
                        sum(r.messages for r in receivers),
                    )
                )
            else:
                break
    finally:
        await close()
        pipe.send(True)


def main(pipe: Connection, kind: str, target: str, subject: str, count: int) -> None:
    """A subscriber process: `count` subscribers of `kind` on `subject` at `target`."""
    asyncio.run(_serve(pipe, kind, target, subject, count))
