"""Gateway bench: events/s and publish->client latency over WebSockets, next to StreamEvents.

One run starts an embedded nats-server, the events service and the gateway (each its own
process, as deployed), then measures with the same publisher and the same events:

- the events service's own StreamEvents (gRPC) with 1 and 100 subscribers (100 streams),
- the gateway's WebSocket with 1 and 100 sockets on one filter (one shared upstream stream),
  plain (one message per event) and with `"batch": true` (events already queued for a socket go
  out in one message),
- 100 sockets while one more socket, on the same filter, never reads and is flooded with
  6 MiB of other events (it must be closed with 4008, the others unaffected), with the
  gateway's memory before and after.

"events/s" is per subscriber: events delivered to one subscriber per second while the publisher
goes flat out (PublishEvents batches; the mesh's end-to-end rate, publish included). Latency is publish call ->
message parsed by the client, at a steady 200 events/s, so it is not queueing behind a burst.
The clients share one process (and 2 cores with the servers), so 100-subscriber figures include
the clients' own parsing; compare rows with each other, not with other machines. Each row's note
gives the CPU the gateway, the events service and the clients' process used during the flat-out
phase (100% = one core throughout): which of them limits the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import psutil
import websockets

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.embedded import EmbeddedNats, free_port
from bench._processes import service_process, wait_serving

WS_BATCHED = 'WebSocket, "batch": true'
THROUGHPUT_EVENTS = 1500
LATENCY_EVENTS = 400
LATENCY_RATE = 200.0
# Every subscriber has its events within this (a loaded machine needs minutes for 100 sockets).
MEASURE_TIMEOUT = 400.0
PUBLISH_BATCH = 50  # events per PublishEvents request while publishing flat out
BATCHES_IN_FLIGHT = 2


@dataclass
class Result:
    name: str
    subscribers: int
    events_per_s: float
    p50_ms: float
    p99_ms: float
    note: str = ""


class Receiver:
    """Counts events for one subscriber; records latency when the payload carries a send time."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies: list[float] = []
        self.measure = False
        self.target = 0
        self.done = asyncio.Event()

    def arrived(self, sent: float | None) -> None:
        now = time.time()
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now
        if self.measure and sent:
            self.latencies.append(now - sent)
        if self.target and self.count >= self.target:
            self.done.set()

    def reset(self, target: int, measure: bool) -> None:
        self.count = 0
        self.latencies = []
        self.measure = measure
        self.target = target
        self.done = asyncio.Event()


async def _publish(
    stub: events_pb2_grpc.EventServiceStub, subject: str, count: int, *, rate: float = 0
) -> None:
    """Publish `count` events: flat out (bounded concurrency) or at a steady `rate`."""

    def tick(i: int) -> events_pb2.Event:
        event = events_pb2.Event(type="bench.tick", subject=subject, source="bench")
        event.data.update({"i": i, "t": time.time()})
        return event

    async def one(i: int) -> None:
        await stub.PublishEvent(events_pb2.PublishEventRequest(event=tick(i)))

    if rate:
        start = time.perf_counter()
        tasks = []
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return
    # Flat out: PublishEvents batches, so the publisher is not what limits the subscribers.
    gate = asyncio.Semaphore(BATCHES_IN_FLIGHT)

    async def batch(first: int) -> None:
        async with gate:
            events = [tick(i) for i in range(first, min(first + PUBLISH_BATCH, count))]
            await stub.PublishEvents(events_pb2.PublishEventsRequest(events=events))

    await asyncio.gather(*(batch(i) for i in range(0, count, PUBLISH_BATCH)))


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def _measure(
    name: str,
    receivers: list[Receiver],
    stub: events_pb2_grpc.EventServiceStub,
    subject: str,
    note: str = "",
    processes: dict[str, psutil.Process] | None = None,
) -> Result:
    # Warm up: every subscriber sees an event, so all streams are live before timing.
    # ("now" streams start when the service opens them: keep publishing until all have one.)
    for r in receivers:
        r.reset(1, False)
    for _ in range(300):
        await _publish(stub, subject, 1)
        await asyncio.sleep(0.2)
        if all(r.done.is_set() for r in receivers):
            break
    else:
        raise RuntimeError(f"{name}: subscribers never received the warm-up events")
    await asyncio.sleep(1.0)  # let the last warm-up events land before counting

    for r in receivers:
        r.reset(THROUGHPUT_EVENTS, False)
    processes = processes or {}
    cpu_before = {label: _cpu_seconds(p) for label, p in processes.items()}
    started = time.time()
    await _publish(stub, subject, THROUGHPUT_EVENTS)
    if not await _all_done(receivers):
        # A machine too busy for this row: say so, and let the other rows run.
        got = sorted(r.count for r in receivers)
        median = got[len(got) // 2]
        note = (
            f"NOT MEASURED: after {MEASURE_TIMEOUT:g}s the median subscriber had "
            f"{median}/{THROUGHPUT_EVENTS} events; {note}"
        )
        return Result(name, len(receivers), float("nan"), float("nan"), float("nan"), note)
    rates = [THROUGHPUT_EVENTS / max(r.last - started, 1e-9) for r in receivers]
    # Where the flat-out phase's time went: each process's CPU over the phase's wall time
    # (100% = one core busy throughout).
    elapsed = max(time.time() - started, 1e-9)
    busy = ", ".join(
        f"{label} {(_cpu_seconds(p) - cpu_before[label]) / elapsed:.0%}"
        for label, p in processes.items()
    )
    if busy:
        note = f"CPU {busy}; {note}"

    for r in receivers:
        r.reset(LATENCY_EVENTS, True)
    await _publish(stub, subject, LATENCY_EVENTS, rate=LATENCY_RATE)
    if not await _all_done(receivers):
        note = f"latency NOT MEASURED (events missing after {MEASURE_TIMEOUT:g}s); {note}"
    latencies = sorted(x for r in receivers for x in r.latencies) or [float("nan")]
    return Result(
        name,
        len(receivers),
        statistics.median(rates),
        latencies[len(latencies) // 2] * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        note,
    )


async def _all_done(receivers: list[Receiver]) -> bool:
    """Whether every subscriber got its events within MEASURE_TIMEOUT."""
    try:
        await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in receivers)), MEASURE_TIMEOUT)
    except TimeoutError:
        return False
    return True


async def _grpc_subscribers(
    address: str, subject: str, count: int
) -> tuple[list[Receiver], Callable[[], Any]]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, count // 25))]
    receivers = [Receiver() for _ in range(count)]
    calls = []

    async def consume(call: Any, receiver: Receiver) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for response in call:
                fields = response.event.data.fields
                receiver.arrived(fields["t"].number_value if "t" in fields else None)

    tasks = []
    for i, receiver in enumerate(receivers):
        stub = events_pb2_grpc.EventServiceStub(channels[i % len(channels)])
        call = stub.StreamEvents(
            events_pb2.StreamEventsRequest(filter=events_pb2.EventFilter(subject=subject))
        )
        calls.append(call)
        tasks.append(asyncio.create_task(consume(call, receiver)))

    async def close() -> None:
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()

    return receivers, close


async def _ws_subscribers(
    url: str, subject: str, count: int, batch: bool = False
) -> tuple[list[Receiver], Callable[[], Any]]:
    receivers = [Receiver() for _ in range(count)]
    sockets: list[Any] = []

    async def open_one() -> Any:
        ws = await websockets.connect(url, open_timeout=30, max_size=None)
        await ws.recv()  # welcome
        subscribe = {"type": "subscribe", "id": "b", "filter": {"subject": subject}}
        await ws.send(json.dumps({**subscribe, "batch": True} if batch else subscribe))
        reply = json.loads(await ws.recv())
        assert reply["type"] == "subscribed", reply
        return ws

    for start in range(0, count, 50):
        sockets += await asyncio.gather(*(open_one() for _ in range(min(50, count - start))))

    async def consume(ws: Any, receiver: Receiver) -> None:
        # orjson: the 100 clients share one process with the publisher, and decoding every
        # `events` message with the json module was most of that process's time (py-spy).
        with contextlib.suppress(websockets.ConnectionClosed, asyncio.CancelledError):
            async for text in ws:
                if batch:
                    message = orjson.loads(text)
                    for item in message.get("events", ()):
                        receiver.arrived(item["event"]["data"]["t"] if receiver.measure else None)
                    continue
                if receiver.measure:
                    message = orjson.loads(text)
                    if message["type"] == "event":
                        receiver.arrived(message["event"]["data"]["t"])
                elif text.startswith('{"type":"event"'):
                    receiver.arrived(None)

    tasks = [asyncio.create_task(consume(ws, r)) for ws, r in zip(sockets, receivers, strict=True)]

    async def close() -> None:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)

    return receivers, close


async def _ws_batched_subscribers(
    url: str, subject: str, count: int
) -> tuple[list[Receiver], Callable[[], Any]]:
    return await _ws_subscribers(url, subject, count, batch=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f}"


def issue_rows(results: list[Result]) -> None:
    """Issue 15's row: 100 sockets on one filter, next to its target."""
    print(f"\nissue 15 rows ({load()})")
    for r in results:
        if r.subscribers == 100 and r.name in ("WebSocket (gateway)", WS_BATCHED):
            met = r.events_per_s >= 1000 and r.p99_ms <= 50
            if r.events_per_s != r.events_per_s:  # NaN: the row could not be measured
                print(f"  100 sockets, {r.name:<34} not measured: {r.note}")
                continue
            print(
                f"  100 sockets, {r.name:<34} {r.events_per_s:>7.0f} ev/s to every client, "
                f"p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms   target >= 1,000 ev/s, "
                f"p99 <= 50 ms {'(met)' if met else '(NOT met)'}"
            )


async def _wait_http(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"gateway at {url} did not start")


async def _stuck_socket(port: int, subject: str, filler: str) -> Any:
    """A socket that never reads, on the measured subject and on a filler subject."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", sock=sock, max_queue=1)
    for sub_id, name in (("s", subject), ("f", filler)):
        await ws.send(json.dumps({"type": "subscribe", "id": sub_id, "filter": {"subject": name}}))
    return ws


async def _fill(stub: events_pb2_grpc.EventServiceStub, subject: str) -> None:
    """16 KiB events only the stuck socket wants: it falls behind while the others are timed."""
    payload = "x" * 16384
    for i in range(400):
        event = events_pb2.Event(type="bench.fill", subject=subject, source="bench")
        event.data.update({"i": i, "p": payload})
        await stub.PublishEvent(events_pb2.PublishEventRequest(event=event))
        await asyncio.sleep(0.005)


async def run() -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="amelia-bench-gw-") as tmp:
        root = Path(tmp)
        nats = EmbeddedNats(root, free_port())
        nats_url = nats.start()
        events_port, gateway_port = free_port(), free_port()
        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "DATABASE_URL": "",
            "AMELIA_DATA_DIR": str(root / "data"),
            "HOST": "127.0.0.1",
            "AMELIA_API_TOKEN": "",
            "LOG_LEVEL": "WARNING",
            "EVENTS_GRPC_PORT": str(events_port),
            "EVENTS_ADDRESS": f"127.0.0.1:{events_port}",
            "AGENTS_ADDRESS": f"127.0.0.1:{free_port()}",
            "RAG_ADDRESS": f"127.0.0.1:{free_port()}",
            "PORT": str(gateway_port),
            "WS_MAX_CONNECTIONS": "300",
            "WS_SEND_QUEUE": "200",
        }
        address = f"127.0.0.1:{events_port}"
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        ws_url = f"ws://127.0.0.1:{gateway_port}/ws"
        try:
            async with (
                service_process(["-m", "amelia_events"], env, root) as events_service,
                service_process(["-m", "amelia_gateway"], env, root) as gateway,
            ):
                processes = {
                    "gateway": psutil.Process(gateway.pid),
                    "events": psutil.Process(events_service.pid),
                    "clients": psutil.Process(),
                }
                await wait_serving(address)
                await _wait_http(gateway_url)
                channel = grpc.aio.insecure_channel(address)
                stub = events_pb2_grpc.EventServiceStub(channel)
                for name, factory, target in (
                    (WS_BATCHED, _ws_batched_subscribers, ws_url),
                    ("WebSocket (gateway)", _ws_subscribers, ws_url),
                    ("StreamEvents (gRPC, events service)", _grpc_subscribers, address),
                ):
                    for count in (1, 100):
                        subject = f"bench/{name[:3].lower()}{count}x{time.monotonic_ns()}"
                        receivers, close = await factory(target, subject, count)
                        note = "100 streams" if count > 1 and "gRPC" in name else ""
                        if count > 1 and "gateway" in name:
                            note = "1 upstream stream"
                        note += f" ({load()})"
                        results.append(
                            await _measure(name, receivers, stub, subject, note, processes)
                        )
                        await close()
                        print(_row(results[-1]), flush=True)

                # 100 readers and one socket that never reads.
                proc = psutil.Process(gateway.pid)
                subject = f"bench/stuck{time.monotonic_ns()}"
                filler_subject = f"bench/fill{time.monotonic_ns()}"
                stuck = await _stuck_socket(gateway_port, subject, filler_subject)
                receivers, close = await _ws_subscribers(ws_url, subject, 100)
                before = proc.memory_info().rss
                filler = asyncio.create_task(_fill(stub, filler_subject))
                result = await _measure("WebSocket + 1 stuck socket", receivers, stub, subject)
                await filler
                after = proc.memory_info().rss
                async with httpx.AsyncClient(base_url=gateway_url) as http:
                    stats = (await http.get("/v1/status")).json()["gateway"]
                result.note = (
                    f"stuck closed: {'yes' if stats['wsClosedSlow'] else 'NO'}; gateway RSS "
                    f"{before / 2**20:.0f}->{after / 2**20:.0f} MiB"
                )
                results.append(result)
                print(_row(result), flush=True)
                await close()
                with contextlib.suppress(Exception):
                    await stuck.close()
                await channel.close()
        finally:
            nats.stop()
    return results


def _row(r: Result) -> str:
    return (
        f"{r.name:<38} {r.subscribers:>5} {r.events_per_s:>10.0f} {r.p50_ms:>8.1f} "
        f"{r.p99_ms:>8.1f}  {r.note}"
    )


def main() -> None:
    print(
        f"publisher: {THROUGHPUT_EVENTS} events flat out (PublishEvents, {PUBLISH_BATCH}/request, "
        f"{BATCHES_IN_FLIGHT} in flight), "
        f"then {LATENCY_EVENTS} at {LATENCY_RATE:.0f}/s for latency"
    )
    print(f"{'path':<38} {'subs':>5} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}  note")
    started = time.perf_counter()
    results = asyncio.run(run())
    issue_rows(results)
    print(f"(gateway bench: {time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
