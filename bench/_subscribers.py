"""The gateway bench's subscribers, in processes of their own (bench/gateway.py drives them).

100 sockets in the benchmark's one Python thread measured that thread, not the gateway: reading
and decoding 100 sockets' messages took more CPU than the gateway spent sending them. Each
process here holds a share of a row's subscribers (WebSockets on the gateway, or StreamEvents
calls on the events service), decodes every message with orjson, counts each subscriber's
events and, while measuring latency, takes receive time minus the publish time the event
carries (`data.t`: the publisher's time.time(), the same clock on the same machine).

The parent sends commands over a pipe and gets one answer per command:
    ("reset", target, measure) -> True    count afresh up to `target` events each
    ("status",)                -> bool    whether every subscriber has its target
    ("wait", timeout)          -> Report  once every subscriber has it, or after `timeout`
    ("close",)                 -> True    and the process ends
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


@dataclass
class Report:
    """What one process's subscribers received since the last reset."""

    done: bool
    counts: list[int]
    lasts: list[float]  # time.time() of each subscriber's last event
    latencies: list[float] = field(default_factory=list)  # seconds, publish -> decoded


class Receiver:
    """Counts events for one subscriber; records latency when measuring."""

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.latencies: list[float] = []
        self.measure = False
        self.target = 0
        self.done = asyncio.Event()

    def arrived(self, data: dict[str, Any]) -> None:
        now = time.time()
        self.count += 1
        self.last = now
        if self.measure and "t" in data:
            self.latencies.append(now - data["t"])
        if self.target and self.count >= self.target:
            self.done.set()

    def reset(self, target: int, measure: bool) -> None:
        self.count = 0
        self.latencies = []
        self.measure = measure
        self.target = target
        self.done = asyncio.Event()


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
        with contextlib.suppress(websockets.ConnectionClosed, asyncio.CancelledError):
            async for text in ws:
                message = orjson.loads(text)
                kind = message["type"]
                if kind == "events":
                    for item in message["events"]:
                        receiver.arrived(item["event"]["data"])
                elif kind == "event":
                    receiver.arrived(message["event"]["data"])

    tasks = [asyncio.create_task(consume(ws, r)) for ws, r in zip(sockets, receivers, strict=True)]

    async def close() -> None:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)

    return close


async def _stream_events(address: str, subject: str, receivers: list[Receiver]) -> Closer:
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, len(receivers) // 25))]
    calls = []
    tasks = []

    async def consume(call: Any, receiver: Receiver) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for response in call:
                fields = response.event.data.fields
                receiver.arrived({"t": fields["t"].number_value} if "t" in fields else {})

    request = events_pb2.StreamEventsRequest(filter=events_pb2.EventFilter(subject=subject))
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
    if kind == STREAM_EVENTS:
        close = await _stream_events(target, subject, receivers)
    else:
        close = await _websockets(target, subject, receivers, batch=kind == WEBSOCKET_BATCHED)
    pipe.send(True)  # open
    try:
        while True:
            command = await asyncio.to_thread(pipe.recv)
            if command[0] == "reset":
                for r in receivers:
                    r.reset(command[1], command[2])
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
