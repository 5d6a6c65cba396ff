"""Events bench: StreamEvents next to a bare nats-py JetStream consumer, on the same stream.

Starts its own nats-server (embedded, free port, temp dir), the events service (its own
process, as deployed: `bench/_processes.py` says why) and the paced publisher (a process of its
own too, `Publisher`), then measures in one run:

- live: a publisher paced at RATE events/s and ONE reader at a time, subscribed before it starts;
  each event's publish→receive latency is taken from the envelope's `time` (same clock). Every
  reader gets LIVE_ROUNDS turns (the order rotated each round) and its row gives the median of
  its rounds' p50s and p99s: readers run together in this one process would compete for its one
  thread, and the one with the most work per event (an old StreamEvents client: a gRPC message
  per event) would slow all the others.
- live with a stalled subscriber: the batched StreamEvents reader alone again, while another
  StreamEvents client reads nothing.
- replay: every stored event read from the beginning as fast as each reader can.
- publish: acknowledged publishes per second, through the client library and through gRPC,
  one event per call and in batches (PublishEvents, `EventLog.publish_events`).

StreamEvents is measured both ways: one event per message (what old clients get) and with
`max_events_per_message` (several events per message when they are already read). The last
table is issue 15's rows: each figure, its ratio to the bare baseline and the target. The
machine's load average is printed with each phase: on a shared machine only ratios measured in
the same run compare.

The readers run in this process, one at a time in the live phases, each with the event loop
to itself. The paced publisher has a process of its own: sharing the reader's loop, its 2,000
wake-ups a second delayed the reader's callbacks (session 9 measured that loop lagging 1.7-9 ms
at p99 under load) and the timing of every row with them, the bare rows included. The replay's
publishes and the publish phase still run here. Absolute figures are lower than across
machines; the side-by-side ratios are the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import api

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.eventlog import EventLog, StartAt, decode_event, filter_subjects, make_event
from amelia_common.grpc_client import aio_channel
from amelia_common.logging import configure_logging
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings
from bench._processes import cpu_seconds, service_process, wait_serving
from bench._run import run_in_temp_dir

LIVE_EVENTS = 4_000
LIVE_ROUNDS = 3  # turns each reader gets alone with the live publisher
RATE = 2_000  # events/s offered during the live phases
REPLAY_EVENTS = 30_000
PUBLISH_CONCURRENCY = 64
PUBLISH_EVENTS = 6_400
PUBLISH_BATCH = 64  # events per PublishEvents request
BATCHES_IN_FLIGHT = 2
PER_MESSAGE = 256  # max_events_per_message of the batched StreamEvents reader
PAYLOAD = {"text": "x" * 200}

STREAM_ONE = "StreamEvents (gRPC, one event/message)"
STREAM_BATCHED = f"StreamEvents (gRPC, {PER_MESSAGE} events/message)"
ORDERED = "nats-py ordered push consumer (bare)"
PUBLISH_ONE = "PublishEvent over gRPC (64 in flight)"
PUBLISH_BATCHED = (
    f"PublishEvents over gRPC ({PUBLISH_BATCH}/request, {BATCHES_IN_FLIGHT} in flight)"
)


@dataclass
class Reading:
    """What one reader saw: receive times and latencies."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    first: float = 0.0
    last: float = 0.0
    count: int = 0

    def saw(self, sent_ns: int) -> None:
        now = time.time_ns()
        mono = time.perf_counter()
        if not self.count:
            self.first = mono
        self.last = mono
        self.count += 1
        self.latencies_ms.append((now - sent_ns) / 1e6)

    def rate(self, started: float) -> float:
        return self.count / max(self.last - started, 1e-9)

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Read:
    """One reader's task: `total` events of `subject` after sequence `after`, counted in
    `reading`; `ready` is set once it is subscribed."""

    subject: str
    after: int
    total: int
    reading: Reading
    ready: asyncio.Event


def sent_ns(event: events_pb2.Event) -> int:
    return event.time.seconds * 1_000_000_000 + event.time.nanos


async def grpc_reader(
    stub: events_pb2_grpc.EventServiceStub, read: Read, per_message: int = 0
) -> None:
    """StreamEvents; `per_message` > 1 asks for several events per message."""
    request = events_pb2.StreamEventsRequest(
        filter=events_pb2.EventFilter(subject=read.subject),
        after_sequence=read.after,
        max_events_per_message=per_message,
    )
    call = stub.StreamEvents(request)
    await call.initial_metadata()
    read.ready.set()
    async for item in call:
        for event in item.events if per_message > 1 else (item.event,):
            read.reading.saw(sent_ns(event))
        if read.reading.count >= read.total:
            break
    call.cancel()


async def library_reader(log: EventLog, read: Read) -> None:
    """The shared client's reader (what StreamEvents runs on), without gRPC in between."""
    async with log.read(subject=read.subject, start=StartAt.after(read.after)) as reader:
        await reader.open()
        read.ready.set()
        async for event in reader:
            read.reading.saw(sent_ns(event))
            if read.reading.count >= read.total:
                break


async def nats_pull_reader(nc: NATS, stream: str, read: Read) -> None:
    """The bare nats-py way: an ephemeral pull consumer fetched in batches."""
    js = nc.jetstream()
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=read.after + 1,
        mem_storage=True,
        inactive_threshold=30,
    )
    subject = filter_subjects([], read.subject)[0]
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    read.ready.set()
    reading = read.reading
    try:
        while reading.count < read.total:
            try:
                msgs = await sub.fetch(256, timeout=1.0)
            except TimeoutError:
                continue
            for msg in msgs:
                event = decode_event(msg.data, msg.metadata.sequence.stream)
                reading.saw(sent_ns(event))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def nats_ordered_reader(nc: NATS, stream: str, read: Read) -> None:
    """The other bare nats-py way: an ordered push consumer (flow control, heartbeats)."""
    js = nc.jetstream()
    done = asyncio.Event()
    reading = read.reading

    async def on_msg(msg: object) -> None:
        event = decode_event(msg.data, msg.metadata.sequence.stream)  # type: ignore[attr-defined]
        reading.saw(sent_ns(event))
        if reading.count >= read.total:
            done.set()

    sub = await js.subscribe(
        filter_subjects([], read.subject)[0],
        stream=stream,
        cb=on_msg,
        ordered_consumer=True,
        config=api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=read.after + 1
        ),
    )
    read.ready.set()
    try:
        await done.wait()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def paced_publish(log: EventLog, subject: str, count: int, rate: float) -> float:
    """Publish `count` events at `rate`/s, each written when due and acknowledged in order
    (`EventLog.pipeline`, as a run's events are); returns the start time (time.time())."""
    started = time.perf_counter()
    started_wall = time.time()
    pipeline = log.pipeline()
    for n in range(count):
        due = started + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await pipeline.submit(
            make_event("bench.tick", subject, {"n": n, **PAYLOAD}, source="bench")
        )
    await pipeline.flush()
    return started_wall


def publisher_main(pipe: Connection, settings: Settings) -> None:
    """The paced publisher's process: ("paced", subject, count, rate) -> its start time
    (time.time()) once all are acknowledged; ("close",) ends it."""

    configure_logging(settings, "bench-publisher")

    async def serve() -> None:
        nc = await connect_nats(settings, "bench-publisher")
        log = EventLog(nc, settings, source="bench")
        pipe.send(True)  # connected
        try:
            while (command := await asyncio.to_thread(pipe.recv))[0] == "paced":
                pipe.send(await paced_publish(log, *command[1:]))
        finally:
            await nc.close()

    asyncio.run(serve())


class Publisher:
    """`publisher_main` in a process of its own, so the publisher's timers and NATS traffic never
    delay the reader being timed (nor the reader the publisher)."""

    def __init__(self, settings: Settings) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, theirs = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=publisher_main, args=(theirs, settings), daemon=True
        )
        self.process.start()
        theirs.close()

    async def _ask(self, *command: Any) -> Any:
        self._pipe.send(command)
        return await asyncio.to_thread(self._answer)

    def _answer(self) -> Any:
        if not self._pipe.poll(300):
            raise RuntimeError("the publisher process did not answer in 300 s")
        return self._pipe.recv()

    async def ready(self) -> None:
        await asyncio.to_thread(self._answer)

    async def paced(self, subject: str, count: int, rate: float) -> float:
        """Like `paced_publish`, in the publisher's process; its start on this process's
        time.perf_counter() clock, as the readers take theirs."""
        started_wall = await self._ask("paced", subject, count, rate)
        return time.perf_counter() - (time.time() - started_wall)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._pipe.send(("close",))
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


async def flood(
    publish: Callable[[int], Awaitable[object]],
    count: int,
    in_flight: int = PUBLISH_CONCURRENCY,
) -> float:
    """Acknowledged publishes (calls) per second with `in_flight` at a time."""
    gate = asyncio.Semaphore(in_flight)

    async def one(n: int) -> None:
        async with gate:
            await publish(n)

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    return count / (time.perf_counter() - started)


ReaderFactory = Callable[[Read], Coroutine[Any, Any, None]]


async def run_readers(
    readers: dict[str, ReaderFactory],
    subject: str,
    after: int,
    total: int,
    produce: Callable[[], Awaitable[float]] | None,
) -> list[tuple[Reading, float]]:
    """Start every reader, wait until each is subscribed, produce, wait for all to finish."""
    readings = {name: Reading(name) for name in readers}
    readies = {name: asyncio.Event() for name in readers}
    clock = time.perf_counter()  # replay: the clock runs from before the reader subscribes
    tasks = [
        asyncio.create_task(factory(Read(subject, after, total, readings[name], readies[name])))
        for name, factory in readers.items()
    ]
    await asyncio.gather(*(e.wait() for e in readies.values()))
    if produce is not None:
        await asyncio.sleep(0.3)  # let every consumer settle before the clock starts
        clock = await produce()
    started = clock
    async with asyncio.timeout(120):
        await asyncio.gather(*tasks)
    return [(readings[name], started) for name in readers]


@dataclass
class LiveRow:
    """One reader's rounds of the live phase, each alone with the publisher, and the events
    service's CPU per event in each (steadier than a p99 on a busy machine)."""

    name: str
    rounds: list[tuple[Reading, float]] = field(default_factory=list)
    service_us: list[float] = field(default_factory=list)

    def median_pct(self, q: float) -> float:
        return statistics.median(reading.pct(q) for reading, _ in self.rounds)

    def slowest_rate(self) -> float:
        return min(reading.rate(started) for reading, started in self.rounds)


async def live_rounds(
    readers: dict[str, ReaderFactory], publisher: Publisher, rounds: int, service_pid: int
) -> dict[str, LiveRow]:
    """Each reader alone with a publisher paced at RATE, `rounds` times, the order rotated."""
    rows = {name: LiveRow(name) for name in readers}
    names = list(readers)
    for turn in range(rounds):
        print(f"  round {turn + 1}: {load()}")
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            subject = f"bench/{uuid.uuid4().hex[:12]}"
            cpu = cpu_seconds(service_pid)
            (row,) = await run_readers(
                {name: readers[name]},
                subject,
                0,
                LIVE_EVENTS,
                functools.partial(publisher.paced, subject, LIVE_EVENTS, RATE),
            )
            rows[name].service_us.append((cpu_seconds(service_pid) - cpu) / LIVE_EVENTS * 1e6)
            rows[name].rounds.append(row)
    return rows


def print_live(rows: dict[str, LiveRow]) -> None:
    print(
        f"  {'reader':<40}{'slowest ev/s':>13}{'p50 ms':>9}{'p99 ms':>9}{'svc µs/ev':>11}"
        "   p99 of each round"
    )
    for row in rows.values():
        p99s = ", ".join(f"{reading.pct(0.99):.1f}" for reading, _ in row.rounds)
        print(
            f"  {row.name:<40}{row.slowest_rate():>13,.0f}{row.median_pct(0.5):>9.2f}"
            f"{row.median_pct(0.99):>9.2f}{statistics.median(row.service_us):>11.0f}   {p99s}"
        )
    print(
        "  (svc µs/ev: the events service's CPU per event in each round, median; the bare "
        "readers' is its idle cost)"
    )


def print_rows(title: str, rows: list[tuple[Reading, float]], show_latency: bool) -> None:
    print(f"\n{title}")
    header = f"  {'reader':<40}{'events':>8}{'events/s':>11}"
    if show_latency:
        header += f"{'p50 ms':>9}{'p99 ms':>9}"
    print(header)
    base = rows[-1][0].rate(rows[-1][1]) if rows else 1.0
    for reading, started in rows:
        line = f"  {reading.name:<40}{reading.count:>8}{reading.rate(started):>11,.0f}"
        if show_latency:
            line += f"{reading.pct(0.50):>9.2f}{reading.pct(0.99):>9.2f}"
        if not show_latency:
            line += f"   ({reading.rate(started) / base:.2f}x bare pull)"
        print(line)


async def bench(root: Path) -> None:
    nats_server = EmbeddedNats(root, free_port())
    url = await asyncio.to_thread(nats_server.start)
    port = free_port()
    settings = Settings(
        _env_file=None,
        NATS_URL=url,
        LOG_LEVEL="WARNING",
        AMELIA_DATA_DIR=root / "data",
        # A saturated machine (the live phase offers 2k events/s) may hold an acknowledgement
        # for seconds: the bench measures that latency, it does not fail on it.
        EVENTS_PUBLISH_TIMEOUT_SECONDS=120.0,
    )
    env = {
        **os.environ,
        "NATS_URL": url,
        "DATABASE_URL": "",
        "AMELIA_DATA_DIR": str(root / "data"),
        "LOG_LEVEL": "WARNING",
        "EVENTS_GRPC_PORT": str(port),
        "EVENTS_METRICS_PORT": "0",
        "EVENTS_PUBLISH_TIMEOUT_SECONDS": "120",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
    }
    configure_logging(settings, "bench")
    try:
        async with service_process(["-m", "amelia_events"], env, root) as service:
            address = f"127.0.0.1:{port}"
            await wait_serving(address)
            channel = aio_channel(address, settings)
            stub = events_pb2_grpc.EventServiceStub(channel)
            publisher = Publisher(settings)
            nc = await connect_nats(settings, "bench-publishes")
            readers_nc = await connect_nats(settings, "bench-readers")
            log = EventLog(nc, settings, source="bench")
            try:
                await publisher.ready()
                await _phases(stub, log, publisher, readers_nc, settings.EVENTS_STREAM, service.pid)
            finally:
                await channel.close()
                await readers_nc.close()
                await nc.close()
                await asyncio.to_thread(publisher.close)
    finally:
        await asyncio.to_thread(nats_server.stop)


async def _phases(
    stub: events_pb2_grpc.EventServiceStub,
    log: EventLog,
    publisher: Publisher,
    readers_nc: NATS,
    stream: str,
    service_pid: int,
) -> None:
    reader_log = EventLog(readers_nc, log.settings, source="bench")

    grpc_factory = functools.partial(grpc_reader, stub)
    batched_factory = functools.partial(grpc_reader, stub, per_message=PER_MESSAGE)
    library_factory = functools.partial(library_reader, reader_log)
    ordered_factory = functools.partial(nats_ordered_reader, readers_nc, stream)
    pull_factory = functools.partial(nats_pull_reader, readers_nc, stream)

    readers: dict[str, ReaderFactory] = {
        STREAM_ONE: grpc_factory,
        STREAM_BATCHED: batched_factory,
        "EventLog.read (client library, no gRPC)": library_factory,
        ORDERED: ordered_factory,
        "nats-py pull consumer (bare)": pull_factory,
    }
    print(
        "events bench: nats-server embedded, the events service and the paced publisher "
        "processes of their own; "
        f"payload ~{len(PAYLOAD['text'])} B; live {LIVE_EVENTS} events at {RATE}/s; "
        f"replay {REPLAY_EVENTS} events; {load()}"
    )

    # Live: latency at a steady offered rate, each reader alone with the publisher.
    print(
        f"\nlive, publish → receive: each reader alone with the publisher, {LIVE_ROUNDS} rounds "
        f"of {LIVE_EVENTS} events; medians of the rounds"
    )
    live = await live_rounds(readers, publisher, LIVE_ROUNDS, service_pid)
    print(f"  after: {load()}")
    print_live(live)

    # Live again, with a StreamEvents client that reads nothing at all.
    subject = f"bench/{uuid.uuid4().hex[:12]}"
    stalled = stub.StreamEvents(
        events_pb2.StreamEventsRequest(
            filter=events_pb2.EventFilter(subject=subject), after_sequence=0
        )
    )
    await stalled.initial_metadata()
    rows = await run_readers(
        {"StreamEvents, beside a stalled client": batched_factory},
        subject,
        0,
        LIVE_EVENTS,
        lambda: publisher.paced(subject, LIVE_EVENTS, RATE),
    )
    stalled.cancel()
    print_rows(f"live, while another StreamEvents client stalls ({load()})", rows, True)

    # Replay: catch up on stored history as fast as possible.
    subject = f"bench/{uuid.uuid4().hex[:12]}"
    first = await log.publish("bench.tick", subject, PAYLOAD)
    library_rate = await flood(
        lambda n: log.publish("bench.tick", subject, {"n": n, **PAYLOAD}), REPLAY_EVENTS - 1
    )
    replay_load = load()
    replay_rows = []
    for name, factory in readers.items():
        (row,) = await run_readers(
            {name: factory}, subject, first.sequence - 1, REPLAY_EVENTS, None
        )
        replay_rows.append(row)
    print_rows(f"replay from the beginning (catch-up; {replay_load})", replay_rows, False)
    replay = {reading.name: reading.rate(started) for reading, started in replay_rows}

    # Publishing: acknowledged events per second.
    publish_load = load()
    publish = await publish_rates(stub, log, library_rate)
    print(f"\npublish (each acknowledged by JetStream; {publish_load})")
    for name, rate in publish.items():
        print(f"  {name:<58}{rate:>10,.0f} events/s")

    bare_p99 = live[ORDERED].median_pct(0.99)
    print(f"\nissue 15 rows (ratios within this run; {load()})")
    print(f"  {'path':<44}{'figure':>32}{'ratio':>9}   target")
    summary_row(
        "replay over StreamEvents (old clients)",
        f"{replay[STREAM_ONE]:,.0f} ev/s vs {replay[ORDERED]:,.0f}",
        replay[STREAM_ONE] / replay[ORDERED],
        ">= 0.5x bare ordered push",
        at_least=0.5,
    )
    summary_row(
        f"replay over StreamEvents ({PER_MESSAGE}/message)",
        f"{replay[STREAM_BATCHED]:,.0f} ev/s vs {replay[ORDERED]:,.0f}",
        replay[STREAM_BATCHED] / replay[ORDERED],
        ">= 0.5x bare ordered push",
        at_least=0.5,
    )
    summary_row(
        "PublishEvent over gRPC, 64 in flight",
        f"{publish[PUBLISH_ONE]:,.0f} ev/s vs {library_rate:,.0f}",
        publish[PUBLISH_ONE] / library_rate,
        ">= 0.5x EventLog.publish",
        at_least=0.5,
    )
    summary_row(
        f"PublishEvents over gRPC ({PUBLISH_BATCH}/request)",
        f"{publish[PUBLISH_BATCHED]:,.0f} ev/s vs {library_rate:,.0f}",
        publish[PUBLISH_BATCHED] / library_rate,
        ">= 0.5x EventLog.publish",
        at_least=0.5,
    )
    for name, label in ((STREAM_ONE, "old clients"), (STREAM_BATCHED, f"{PER_MESSAGE}/message")):
        p99 = live[name].median_pct(0.99)
        summary_row(
            f"live StreamEvents p99 at {RATE / 1000:g}k ev/s ({label})",
            f"{p99:.1f} ms vs {bare_p99:.1f} ms (medians)",
            p99 / bare_p99,
            "<= 2x bare push",
            at_most=2.0,
        )


def load() -> str:
    """The machine's load average, and the share of the last 10 s some task waited for a CPU
    (Linux PSI): near 100%, every process of the benchmark is starved and no figure is its own."""
    one, five, fifteen = os.getloadavg()
    text = f"load average {one:.1f} {five:.1f} {fifteen:.1f}"
    with contextlib.suppress(OSError, ValueError, IndexError):
        some = Path("/proc/pressure/cpu").read_text().split()[1]  # "avg10=12.34"
        text += f", CPU pressure {float(some.split('=')[1]):.0f}%"
    return text


def summary_row(
    path: str,
    figure: str,
    ratio: float,
    target: str,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
) -> None:
    met = (at_least is None or ratio >= at_least) and (at_most is None or ratio <= at_most)
    print(f"  {path:<44}{figure:>32}{ratio:>8.2f}x   {target} {'(met)' if met else '(NOT met)'}")


async def publish_rates(
    stub: events_pb2_grpc.EventServiceStub, log: EventLog, library_rate: float
) -> dict[str, float]:
    """Acknowledged events/s through each publishing path, one after the other."""
    subject = f"bench/{uuid.uuid4().hex[:12]}"

    def tick(n: int) -> events_pb2.Event:
        event = events_pb2.Event(type="bench.tick", subject=subject)
        event.data.update({"n": n, **PAYLOAD})
        return event

    async def library_batch(n: int) -> None:
        await log.publish_events([tick(n * PUBLISH_BATCH + k) for k in range(PUBLISH_BATCH)])

    async def grpc_batch(n: int) -> None:
        request = events_pb2.PublishEventsRequest(
            events=[tick(n * PUBLISH_BATCH + k) for k in range(PUBLISH_BATCH)]
        )
        await stub.PublishEvents(request)

    batches = PUBLISH_EVENTS // PUBLISH_BATCH
    rates = {"EventLog.publish (client library, 64 in flight)": library_rate}
    rates[f"EventLog.publish_events (library, {PUBLISH_BATCH}/batch, 2 in flight)"] = (
        await flood(library_batch, batches, BATCHES_IN_FLIGHT) * PUBLISH_BATCH
    )
    rates[PUBLISH_ONE] = await flood(
        lambda n: stub.PublishEvent(events_pb2.PublishEventRequest(event=tick(n))),
        PUBLISH_EVENTS,
    )
    rates[PUBLISH_BATCHED] = await flood(grpc_batch, batches, BATCHES_IN_FLIGHT) * PUBLISH_BATCH
    return rates


def main() -> None:
    run_in_temp_dir(bench, "events")


if __name__ == "__main__":
    main()
