"""Gateway bench: events/s and publish->client latency over WebSockets, next to StreamEvents.

One run starts an embedded nats-server, the events service and the gateway (each its own
process, as deployed), then measures with the same publisher and the same events:

- the events service's own StreamEvents (gRPC) with 1 and 100 subscribers (100 streams), with
  256 events per message at most (`max_events_per_message`) and one event per message (old
  clients); calls on one filter share one consumer in the service (amelia_events.fanout),
- the gateway's WebSocket with 1 and 100 sockets on one filter (one shared upstream stream),
  with `"batch": true` (events already queued for a socket go out in one message) and plain (one
  message per event),
- 100 sockets while one more socket, on the same filter, never reads and is flooded with
  6 MiB of other events (it must be closed with 4008, the others unaffected), with the
  gateway's memory before and after.

The subscribers run in CLIENT_PROCESSES processes of their own (bench/_subscribers.py), apart
from the publisher: one Python thread reading 100 sockets was the limit of the row before, not
the gateway. Every message is decoded (orjson), as a client would.

"events/s" is per subscriber: events delivered to one subscriber per second while the publisher
goes flat out (PublishEvents batches; the mesh's end-to-end rate, publish included). Latency is
the publisher's time.time() carried in the event -> the subscriber's time.time() once the
message is decoded (one clock), at a steady 200 events/s, so it is not queueing behind a burst.
Each row's note gives the CPU each process used during the flat-out phase (100% = one core
throughout: which of them limits the row) and the CPU per delivered event of the service the
clients talk to (the gateway, or the events service for StreamEvents).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import grpc
import httpx
import psutil
import websockets

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.settings import Settings
from bench import _subscribers
from bench._node_clients import NodeSubscribers, node_websocket
from bench._processes import service_process, wait_serving
from bench._subscribers import (
    PER_MESSAGE,
    STREAM_EVENTS,
    STREAM_EVENTS_BATCHED,
    WEBSOCKET,
    WEBSOCKET_BATCHED,
    Phase,
    Report,
)
from bench.events import load, summary_row

STUCK = "stuck"  # the row with one socket that never reads
WS_BATCHED = 'WebSocket, "batch": true'
WS_PLAIN = "WebSocket (gateway)"
GRPC = "StreamEvents (gRPC, events service)"
GRPC_BATCHED = f"StreamEvents, {PER_MESSAGE}/message (gRPC)"
THROUGHPUT_EVENTS = 1500
LATENCY_EVENTS = 400
LATENCY_RATE = 200.0
# Issue 15's rows (100 sockets): latency at the target's offered load, over STEADY_SECONDS
# after STEADY_WARM_UP seconds at that rate (every event still checked, none missing).
STEADY_RATE = 1000.0
STEADY_WARM_UP = 2.0
STEADY_SECONDS = 10.0
STEADY_EVENTS = int(STEADY_RATE * (STEADY_WARM_UP + STEADY_SECONDS))
# The publisher reached the steady rate when it published at least this share of it.
REACHED = 0.95
# A steady publisher sends the events due every PACE_TICK in one PublishEvents request.
PACE_TICK = 0.005
# Every subscriber has its events within this, or the row says NOT MEASURED.
MEASURE_TIMEOUT = 150.0
PUBLISH_BATCH = 50  # events per PublishEvents request while publishing flat out
MAX_PUBLISH = 1000  # the most events PublishEvents takes in one request
BATCHES_IN_FLIGHT = 2
# Processes the subscribers of a row are spread over (the machine has 2 cores).
CLIENT_PROCESSES = 2
TARGET_EVENTS_PER_S = 1000.0
TARGET_P99_MS = 50.0


@dataclass
class Result:
    name: str
    subscribers: int
    events_per_s: float
    p50_ms: float
    p99_ms: float
    note: str = ""
    # Events/s the publisher reached while latency was measured (0: latency not measured).
    latency_rate: float = 0.0


def _answer(process: BaseProcess, pipe: Connection, timeout: float) -> Any:
    """The subscriber process's answer (in a thread: it blocks); an error if it died first."""
    deadline = time.monotonic() + timeout
    while not pipe.poll(1.0):
        if not process.is_alive():
            raise RuntimeError(f"a subscriber process exited ({process.exitcode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"a subscriber process did not answer within {timeout:g}s")
    try:
        return pipe.recv()
    except EOFError:
        process.join(5)
        raise RuntimeError(f"a subscriber process exited ({process.exitcode})") from None


class Subscribers:
    """A row's subscribers, spread over up to CLIENT_PROCESSES processes."""

    def __init__(self, workers: list[tuple[BaseProcess, Connection]]) -> None:
        self.workers = workers

    @classmethod
    async def start(cls, kind: str, target: str, subject: str, count: int) -> Subscribers:
        context = multiprocessing.get_context("spawn")
        processes = min(count, CLIENT_PROCESSES)
        workers: list[tuple[BaseProcess, Connection]] = []
        for i in range(processes):
            share = count // processes + (1 if i < count % processes else 0)
            mine, theirs = context.Pipe()
            process = context.Process(
                target=_subscribers.main, args=(theirs, kind, target, subject, share), daemon=True
            )
            process.start()
            theirs.close()
            workers.append((process, mine))
        subscribers = cls(workers)
        await subscribers._answers(120.0)  # every subscriber open
        return subscribers

    async def _answers(self, timeout: float) -> list[Any]:
        return list(
            await asyncio.gather(
                *(asyncio.to_thread(_answer, p, pipe, timeout) for p, pipe in self.workers)
            )
        )

    async def ask(self, *command: Any, timeout: float = 60.0) -> list[Any]:
        for _, pipe in self.workers:
            pipe.send(command)
        return await self._answers(timeout)

    async def reset(self, phase: Phase) -> None:
        await self.ask("reset", phase)

    async def all_done(self) -> bool:
        return all(await self.ask("status"))

    async def wait(self, timeout: float) -> list[Report]:
        return await self.ask("wait", timeout, timeout=timeout + 60)

    def processes(self) -> dict[str, psutil.Process]:
        return {f"clients {i + 1}": psutil.Process(p.pid) for i, (p, _) in enumerate(self.workers)}

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ask("close")
        for process, pipe in self.workers:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
            pipe.close()


async def _publish(
    stub: events_pb2_grpc.EventServiceStub,
    subject: str,
    count: int,
    phase: str,
    *,
    rate: float = 0,
) -> Published:
    """Publish `count` events of `phase` (numbered from 0): flat out, or at a steady `rate`.

    Steady: every PACE_TICK the events due by then go in one PublishEvents request, each
    stamped with time.time() as its request is built (latency is measured from there); one
    request at a time, so the events are stored in the order they are numbered (the subscribers
    check it), and a late acknowledgement makes the next request carry more events, not fewer.
    The answer says the rate reached (events over the time to the last acknowledgement), below
    `rate` when the events service or the publisher could not keep up, and the slowest request.
    """

    def tick(i: int) -> events_pb2.Event:
        event = events_pb2.Event(type="bench.tick", subject=subject, source="bench")
        event.data.update({"p": phase, "i": i, "t": time.time()})
        return event

    def request(first: int, last: int) -> events_pb2.PublishEventsRequest:
        return events_pb2.PublishEventsRequest(events=[tick(i) for i in range(first, last)])

    started = time.perf_counter()
    slowest = 0.0
    if rate:
        sent = 0
        while sent < count:
            due = min(count, sent + MAX_PUBLISH, int((time.perf_counter() - started) * rate) + 1)
            if due > sent:
                asked = time.perf_counter()
                await stub.PublishEvents(request(sent, due))
                slowest = max(slowest, time.perf_counter() - asked)
                sent = due
            await asyncio.sleep(started + sent / rate - time.perf_counter() + PACE_TICK)
    else:
        # Flat out: PublishEvents batches, so the publisher is not what limits the subscribers.
        gate = asyncio.Semaphore(BATCHES_IN_FLIGHT)

        async def batch(first: int) -> None:
            async with gate:
                await stub.PublishEvents(request(first, min(first + PUBLISH_BATCH, count)))

        await asyncio.gather(*(batch(i) for i in range(0, count, PUBLISH_BATCH)))
    return Published(count / max(time.perf_counter() - started, 1e-9), slowest)


class Published(NamedTuple):
    rate: float  # events/s, to the last acknowledgement
    slowest: float  # seconds, the slowest PublishEvents of a steady publisher


class Readers(Protocol):
    """A row's subscribers, wherever they run (Python processes, or Node for WebSockets)."""

    async def reset(self, phase: Phase) -> None: ...
    async def all_done(self) -> bool: ...
    async def wait(self, timeout: float) -> list[Report]: ...
    def processes(self) -> dict[str, psutil.Process]: ...
    async def close(self) -> None: ...


# Node.js reads the WebSocket rows when it can (bench/_node_clients.py); else Python processes.
# BENCH_WS_CLIENTS=python reads them in Python anyway (to compare the two clients' cost).
NO_NODE = (
    "BENCH_WS_CLIENTS=python"
    if os.environ.get("BENCH_WS_CLIENTS") == "python"
    else node_websocket()
)


async def _start(kind: str, target: str, subject: str, count: int) -> Readers:
    if kind in (STREAM_EVENTS, STREAM_EVENTS_BATCHED) or NO_NODE is not None:
        return await Subscribers.start(kind, target, subject, count)
    return await NodeSubscribers.start(kind, target, subject, count)


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


class CpuShare:
    """Each process's CPU over a phase's wall time (100% = one core busy throughout): which
    of them limits the phase; and a service's CPU per event delivered to a client."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes
        self.before = {label: _cpu_seconds(p) for label, p in processes.items()}
        self.started = time.perf_counter()

    def note(self, deliveries: int | None, server: str = "gateway") -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        used = {label: _cpu_seconds(p) - self.before[label] for label, p in self.processes.items()}
        busy = ", ".join(f"{label} {seconds / elapsed:.0%}" for label, seconds in used.items())
        if deliveries:
            clients = sum(seconds for label, seconds in used.items() if label.startswith("clients"))
            busy += (
                f"; per delivered event: {server} {used[server] / deliveries * 1e6:.1f} us, "
                f"clients {clients / deliveries * 1e6:.1f} us"
            )
        return f"CPU {busy}"


def _per_message(reports: list[Report], deliveries: int) -> str:
    """Events per message a subscriber received (what the gateway's batching achieved)."""
    messages = sum(r.messages for r in reports)
    return f"{deliveries / messages:.1f} events/message" if messages else ""


def _not_measured(name: str, subscribers: int, why: str) -> Result:
    nan = float("nan")
    return Result(name, subscribers, nan, nan, nan, f"NOT MEASURED: {why}")


def _problems(reports: list[Report], expected: int) -> str:
    """What went wrong for some subscribers: sockets closed, events missing or out of order."""
    problems = []
    closed = [why for r in reports for why in r.closed]
    if closed:
        problems.append(f"{len(closed)} closed (first: {closed[0][:80]})")
    gapped = sum(r.gapped for r in reports)
    if gapped:
        problems.append(f"{gapped} got events with a gap, a repeat or out of order")
    if not problems and not all(r.done for r in reports):
        got = sorted(c for r in reports for c in r.counts)
        problems.append(
            f"after {MEASURE_TIMEOUT:g}s the median subscriber had {got[len(got) // 2]}/{expected}"
        )
    return "; ".join(problems)


_PHASES = itertools.count(1)


def _phase(target: int, *, measure: bool = False, skip: int = 0) -> Phase:
    """The next phase, named apart from every other (a straggler of one is not counted in the
    next)."""
    return Phase(f"p{next(_PHASES)}", target, measure, skip)


async def _measure(
    name: str,
    subscribers: Readers,
    count: int,
    stub: events_pb2_grpc.EventServiceStub,
    subject: str,
    note: str = "",
    processes: dict[str, psutil.Process] | None = None,
    *,
    steady: bool = False,
) -> Result:
    """Flat out (events/s to every subscriber), then latency at a steady rate: STEADY_RATE for
    STEADY_SECONDS after STEADY_WARM_UP when `steady`, else LATENCY_EVENTS at LATENCY_RATE."""
    # Warm up: every subscriber sees an event, so all streams are live before timing.
    # ("now" streams start when the service opens them: keep publishing until all have one.)
    warm_up = _phase(1)
    await subscribers.reset(warm_up)
    for _ in range(300):
        await _publish(stub, subject, 1, warm_up.name)
        await asyncio.sleep(0.2)
        if await subscribers.all_done():
            break
    else:
        raise RuntimeError(f"{name}: subscribers never received the warm-up events")

    flat_out = _phase(THROUGHPUT_EVENTS)
    await subscribers.reset(flat_out)
    processes = {**(processes or {}), **subscribers.processes()}
    cpu = CpuShare(processes)
    started = time.time()
    await _publish(stub, subject, THROUGHPUT_EVENTS, flat_out.name)
    reports = await subscribers.wait(MEASURE_TIMEOUT)
    wrong = _problems(reports, THROUGHPUT_EVENTS)
    if wrong:
        # A machine too busy for this row, or a broken guarantee: say so; the other rows run.
        return _not_measured(name, count, f"flat out: {wrong}; {note}")
    rates = [THROUGHPUT_EVENTS / max(last - started, 1e-9) for r in reports for last in r.lasts]
    # The service whose CPU per delivered event the note gives: the one the clients talk to.
    server = "gateway" if "WebSocket" in name else "events"
    note = "; ".join(
        filter(
            None,
            (
                cpu.note(THROUGHPUT_EVENTS * count if server in processes else None, server),
                _per_message(reports, THROUGHPUT_EVENTS * count),
                note,
            ),
        )
    )

    if steady:
        rate, warm, events = STEADY_RATE, int(STEADY_RATE * STEADY_WARM_UP), STEADY_EVENTS
    else:
        rate, warm, events = LATENCY_RATE, 0, LATENCY_EVENTS
    timed = _phase(events, measure=True, skip=warm)
    await subscribers.reset(timed)
    cpu = CpuShare(processes)
    reached, slowest = await _publish(stub, subject, events, timed.name, rate=rate)
    reports = await subscribers.wait(MEASURE_TIMEOUT)
    measured = f"{events - warm} events at {rate:,.0f}/s"
    if reached < rate * REACHED:
        measured += (
            f" (the publisher reached {reached:,.0f}/s; slowest PublishEvents "
            f"{slowest * 1000:.0f} ms)"
        )
    wrong = _problems(reports, events)
    latencies = sorted(x for r in reports for x in r.latencies) or [float("nan")]
    latency_note = (
        f"latency of {measured}: {cpu.note(events * count if server in processes else None, server)}; "
        + _per_message(reports, events * count)
    )
    if wrong:
        latency_note = f"latency NOT MEASURED: {wrong}; {latency_note}"
        latencies = [float("nan")]
    return Result(
        name,
        count,
        statistics.median(rates),
        latencies[len(latencies) // 2] * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        f"{note}; {latency_note}",
        latency_rate=min(rate, reached) if not wrong else 0.0,
    )


# Issue 15's rows: 100 subscribers on one filter, each kind.
ISSUE_ROWS = {
    WS_BATCHED: "100 sockets, batch",
    WS_PLAIN: "100 sockets, plain",  # one event per message
    GRPC_BATCHED: f"100 StreamEvents, {PER_MESSAGE}/message",
    GRPC: "100 StreamEvents, one event/message",
}


def issue_rows(results: list[Result]) -> None:
    """Issue 15's rows, 100 subscribers on one filter (sockets through the gateway, StreamEvents
    calls on the events service), as two figures next to their targets with the ratio: the
    latency at the target's offered load (every client gap-free), and the rate to every client
    flat out."""
    print(f"\nissue 15 rows ({load()})")
    print(f"  {'path':<44}{'figure':>30}{'ratio':>9}   target")
    for r in results:
        if r.subscribers != 100 or r.name not in ISSUE_ROWS:
            continue
        path = ISSUE_ROWS[r.name]
        if r.latency_rate >= TARGET_EVENTS_PER_S * REACHED:
            summary_row(
                f"{path}, p99 at {TARGET_EVENTS_PER_S / 1000:g}k ev/s each",
                f"{r.p99_ms:.1f} ms (p50 {r.p50_ms:.1f})",
                r.p99_ms / TARGET_P99_MS,
                f"p99 <= {TARGET_P99_MS:g} ms at {TARGET_EVENTS_PER_S:,.0f} ev/s, gap-free",
                at_most=1.0,
            )
        elif r.latency_rate:
            print(
                f"  {path}, latency at the target rate not measured: the publisher reached "
                f"{r.latency_rate:,.0f} ev/s (p99 {r.p99_ms:.1f} ms at that rate)"
            )
        else:
            print(f"  {path}, latency at the target rate not measured (see its row above)")
        if r.events_per_s == r.events_per_s:  # not NaN
            summary_row(
                f"{path}, flat out",
                f"{r.events_per_s:,.0f} ev/s to every client",
                r.events_per_s / TARGET_EVENTS_PER_S,
                f">= {TARGET_EVENTS_PER_S:,.0f} ev/s to every client",
                at_least=1.0,
            )
        else:
            print(f"  {path}, flat out not measured (see its row above)")


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


async def _rows(
    stub: events_pb2_grpc.EventServiceStub,
    address: str,
    ws_url: str,
    processes: dict[str, psutil.Process],
    choice: Choice,
) -> list[Result]:
    """The batched, plain and StreamEvents rows, 1 then 100 subscribers each."""
    results: list[Result] = []
    for name, kind, target in (
        (WS_BATCHED, WEBSOCKET_BATCHED, ws_url),
        (WS_PLAIN, WEBSOCKET, ws_url),
        (GRPC_BATCHED, STREAM_EVENTS_BATCHED, address),
        (GRPC, STREAM_EVENTS, address),
    ):
        if kind not in choice.kinds:
            continue
        for count in choice.counts:
            subject = f"bench/{kind}{count}x{time.monotonic_ns()}"
            subscribers = await _start(kind, target, subject, count)
            grpc_row = kind in (STREAM_EVENTS, STREAM_EVENTS_BATCHED)
            note = f"{count} streams" if count > 1 and grpc_row else ""
            if count > 1 and not grpc_row:
                note = "1 upstream stream"
            note += f" ({load()})"
            slow_before = await _slow_closes(ws_url)
            try:
                results.append(
                    await _measure(
                        name,
                        subscribers,
                        count,
                        stub,
                        subject,
                        note,
                        processes,
                        # (Not one event per message on 100 streams: 1,000 events/s to each is
                        # 100,000 gRPC messages/s, several cores of grpc's per-message cost.)
                        steady=count > 1 and kind != STREAM_EVENTS,
                    )
                )
            finally:
                await subscribers.close()
            slow = await _slow_closes(ws_url) - slow_before
            if slow:
                results[-1].note += f"; the gateway closed {slow} as slow consumers (4008)"
            print(_row(results[-1]), flush=True)
    return results


async def _slow_closes(ws_url: str) -> int:
    """How many sockets the gateway has closed as slow consumers so far (its /v1/status)."""
    url = ws_url.replace("ws://", "http://").removesuffix("/ws")
    async with httpx.AsyncClient(base_url=url) as http:
        return int((await http.get("/v1/status")).json()["gateway"]["wsClosedSlow"])


async def _stuck_row(
    stub: events_pb2_grpc.EventServiceStub, port: int, gateway: psutil.Process
) -> Result:
    """100 readers and one socket that never reads."""
    ws_url = f"ws://127.0.0.1:{port}/ws"
    slow_before = await _slow_closes(ws_url)
    subject = f"bench/stuck{time.monotonic_ns()}"
    filler_subject = f"bench/fill{time.monotonic_ns()}"
    stuck = await _stuck_socket(port, subject, filler_subject)
    subscribers = await _start(WEBSOCKET, ws_url, subject, 100)
    try:
        before = gateway.memory_info().rss
        filler = asyncio.create_task(_fill(stub, filler_subject))
        result = await _measure("WebSocket + 1 stuck socket", subscribers, 100, stub, subject)
        await filler
        after = gateway.memory_info().rss
    finally:
        await subscribers.close()
    slow = await _slow_closes(ws_url) - slow_before
    result.note = (
        f"sockets closed as slow consumers: {slow} (1 expected: the stuck one); gateway RSS "
        f"{before / 2**20:.0f}->{after / 2**20:.0f} MiB; {result.note}"
    )
    with contextlib.suppress(Exception):
        await stuck.close()
    return result


@dataclass(frozen=True)
class Choice:
    """The rows to run (`python -m bench.gateway --help`); all of them by default."""

    kinds: tuple[str, ...] = (
        WEBSOCKET_BATCHED,
        WEBSOCKET,
        STREAM_EVENTS_BATCHED,
        STREAM_EVENTS,
        STUCK,
    )
    counts: tuple[int, ...] = (1, 100)


async def run(choice: Choice) -> list[Result]:
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
        try:
            async with (
                service_process(["-m", "amelia_events"], env, root) as events_service,
                service_process(["-m", "amelia_gateway"], env, root) as gateway_service,
            ):
                gateway = psutil.Process(gateway_service.pid)
                processes = {
                    "gateway": gateway,
                    "events": psutil.Process(events_service.pid),
                    "nats-server": psutil.Process(nats.pid()),
                    "publisher": psutil.Process(),
                }
                print(f"(gateway pid {gateway.pid}, events pid {events_service.pid})", flush=True)
                await wait_serving(address)
                await _wait_http(f"http://127.0.0.1:{gateway_port}")
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = events_pb2_grpc.EventServiceStub(channel)
                    ws_url = f"ws://127.0.0.1:{gateway_port}/ws"
                    results = await _rows(stub, address, ws_url, processes, choice)
                    if STUCK in choice.kinds:
                        results.append(await _stuck_row(stub, gateway_port, gateway))
                        print(_row(results[-1]), flush=True)
        finally:
            nats.stop()
    return results


def _row(r: Result) -> str:
    return (
        f"{r.name:<38} {r.subscribers:>5} {r.events_per_s:>10.0f} {r.p50_ms:>8.1f} "
        f"{r.p99_ms:>8.1f}  {r.note}"
    )


def _batch_window() -> str:
    """The gateway's WS_BATCH_WINDOW_MS (from the environment, as its process reads it)."""
    default = Settings.model_fields["WS_BATCH_WINDOW_MS"].default
    return os.environ.get("WS_BATCH_WINDOW_MS", f"{default:g}")


def _choice() -> Choice:
    if __name__ != "__main__":  # `python -m bench gateway`: every row
        return Choice()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=Choice().kinds, default=Choice().kinds)
    parser.add_argument("--subscribers", nargs="+", type=int, default=Choice().counts)
    args = parser.parse_args(sys.argv[1:])
    return Choice(tuple(args.only), tuple(args.subscribers))


def main() -> None:
    choice = _choice()
    print(
        f"publisher: {THROUGHPUT_EVENTS} events flat out (PublishEvents, {PUBLISH_BATCH}/request, "
        f"{BATCHES_IN_FLIGHT} in flight), then for latency {LATENCY_EVENTS} at "
        f"{LATENCY_RATE:.0f}/s, or (100 sockets) {STEADY_EVENTS} at {STEADY_RATE:,.0f}/s, the "
        f"first {STEADY_WARM_UP:g}s not timed (the events due every {PACE_TICK * 1000:g} ms in "
        f"one PublishEvents); gateway WS_BATCH_WINDOW_MS={_batch_window()}; "
        f"StreamEvents subscribers in {CLIENT_PROCESSES} Python processes, "
        + (
            "WebSocket ones in one Node.js process"
            if NO_NODE is None
            else f"WebSocket ones too (not Node.js: {NO_NODE})"
        )
    )
    print(f"{'path':<38} {'subs':>5} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}  note")
    started = time.perf_counter()
    results = asyncio.run(run(choice))
    issue_rows(results)
    print(f"(gateway bench: {time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
