"""Scale bench: what replicas and replicated streams cost and buy on this machine, side by side.

Starts its own embedded PostgreSQL and nats-server (temp dir, free port) and, for the last table,
a 3-node NATS cluster on loopback (`amelia_common.nats_cluster`). Services run as processes of
their own, as deployed (`bench._processes`), each replica on its own port; clients reach them
through one channel with gRPC `round_robin` over the replicas' addresses. In one run:

- runs/s with 1, 2 and 4 agents replicas (API + AGENT_WORKERS=2 worker loops each, sharing the
  JetStream run queue): RUNS echo runs created at once, timed from the first CreateRun to the
  last `run.completed` in the event log. Each row adds replicas to the ones already running.
- events/s with 1, 2 and 4 events replicas: acknowledged PublishEvent calls, 64 in flight;
  four replicas run and the client's channel balances over the first 1, 2 or 4 of them, in
  alternating rounds (the median of each is kept).
- PostgreSQL: the client connections the mesh holds with 1, 2 and 4 agents replicas (after their
  burst of runs), next to `max_connections`; and the bytes a chunk's 384-dimension embedding
  takes in a table and in its HNSW index (m=16, ef_construction=64, pgvector's defaults),
  measured on VECTORS vectors: what the next bottlenecks in docs/scale-out.md are sized with.
- publish cost, R1 vs R3: acknowledged JetStream publishes (nats-py) to a stream kept on one node
  and to one kept on three, on the same cluster, alternating rounds: latency with one publish
  in flight, throughput with 64.

The load average is printed with each table: on a shared machine (and on 2 cores, where more
processes cannot add CPU) only figures of the same run compare. docs/scale-out.md reads them.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import asyncpg
from nats.aio.client import Client as NATS

from amelia.v1 import agents_pb2, agents_pb2_grpc, events_pb2, events_pb2_grpc
from amelia_cli.health import grpc_health
from amelia_cli.mesh import SERVICES, service_env
from amelia_common.db import libpq_url
from amelia_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from amelia_common.eventlog import EventLog, StartAt
from amelia_common.grpc_client import aio_channel
from amelia_common.logging import configure_logging
from amelia_common.nats_client import connect_nats
from amelia_common.nats_cluster import NatsCluster
from amelia_common.settings import Settings
from bench._processes import service_process
from bench.agents import mesh_settings
from bench.events import PAYLOAD, flood, load

REPLICAS = (1, 2, 4)
RUNS = 60
EVENTS = 2_000
IN_FLIGHT = 64
LATENCY_PUBLISHES = 300
THROUGHPUT_PUBLISHES = 3_000
ROUNDS = 2  # of R1 then R3, alternating
VECTORS = 10_000
EVENT_ROUNDS = 3  # of 1, 2 and 4 events replicas, alternating
RUN_DEADLINE_SECONDS = 300.0
START_DEADLINE_SECONDS = 300.0
TERMINAL = ["run.completed", "run.failed", "run.cancelled"]


class Replicas:
    """Replicas of one service as processes, added to while the bench runs."""

    def __init__(self, service: str, settings: Settings, root: Path, stack: AsyncExitStack):
        self.spec = next(spec for spec in SERVICES if spec.name == service)
        self.settings = settings
        self.root = root
        self.stack = stack
        self.addresses: list[str] = []

    async def grow_to(self, count: int) -> str:
        """`count` replicas running and SERVING; their comma list."""
        new: list[str] = []
        while len(self.addresses) + len(new) < count:
            port = free_port()
            folder = self.root / f"{self.spec.name}-{len(self.addresses) + len(new)}"
            folder.mkdir(parents=True)
            env = {
                **os.environ,
                **service_env(self.settings),
                self.spec.port_setting: str(port),
                "ENVIRONMENT": "testing",
                "LOG_LEVEL": "WARNING",
                "AGENT_WORKERS": str(self.settings.AGENT_WORKERS),
                "LOCAL_MODEL": "off",
                # Replicas on one host: each would take the same default metrics port.
                "EVENTS_METRICS_PORT": "0",
                "AGENTS_METRICS_PORT": "0",
            }
            args = ["-m", self.spec.module]
            await self.stack.enter_async_context(service_process(args, env, folder))
            new.append(f"127.0.0.1:{port}")
        await asyncio.gather(*(self.serving(address) for address in new))
        self.addresses += new
        return ",".join(self.addresses)

    async def serving(self, address: str) -> None:
        """Until the replica at `address` reports SERVING (an agents process takes a minute to
        start on a busy 2-core machine)."""
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        while await grpc_health(self.settings, address, self.spec.grpc_service) != "SERVING":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.spec.name} at {address}: not SERVING")
            await asyncio.sleep(0.5)


async def runs_per_second(settings: Settings, address: str, count: int = RUNS) -> float:
    """`count` echo runs created at once through `address`; runs/s until the last one ended."""
    nc = await connect_nats(settings, "bench-scale-runs")
    log = EventLog(nc, settings, source="bench")
    after = int((await nc.jetstream().stream_info(settings.EVENTS_STREAM)).state.last_seq)
    try:
        async with aio_channel(address, settings) as channel:
            stub = agents_pb2_grpc.AgentServiceStub(channel)
            started = time.perf_counter()

            async def create(i: int) -> str:
                request = agents_pb2.CreateRunRequest(run=agents_pb2.Run(workflow="workflows/echo"))
                request.run.input.update({"message": f"bench run {i}"})
                return (await stub.CreateRun(request, timeout=60)).run.name

            names = set(await asyncio.gather(*(create(i) for i in range(count))))
            ended: dict[str, str] = {}
            async with (
                asyncio.timeout(RUN_DEADLINE_SECONDS),
                log.read(TERMINAL, "runs/*", StartAt.after(after)) as reader,
            ):
                async for event in reader:
                    if event.subject in names:
                        ended[event.subject] = event.type
                        if len(ended) == len(names):
                            break
            elapsed = time.perf_counter() - started
    finally:
        await nc.drain()
    failed = [name for name, end in ended.items() if end != "run.completed"]
    if failed:
        raise RuntimeError(f"{len(failed)} bench runs did not complete: {failed[:3]}")
    return count / elapsed


async def events_per_second(settings: Settings, address: str) -> float:
    """Acknowledged PublishEvent calls per second, IN_FLIGHT at a time, through `address`
    (after a warm-up on the same channel, so that every replica is connected)."""
    subject = f"bench/{uuid.uuid4().hex[:12]}"
    async with aio_channel(address, settings) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)

        async def publish(n: int) -> None:
            event = events_pb2.Event(type="bench.tick", subject=subject)
            event.data.update({"n": n, **PAYLOAD})
            await stub.PublishEvent(events_pb2.PublishEventRequest(event=event), timeout=60)

        await flood(publish, IN_FLIGHT, IN_FLIGHT)
        return await flood(publish, EVENTS, IN_FLIGHT)


async def connections(settings: Settings) -> tuple[int, int]:
    """Client connections open on PostgreSQL (this one left out), and `max_connections`."""
    conn = await asyncpg.connect(libpq_url(settings.DATABASE_URL))
    try:
        open_now = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        return int(open_now) - 1, int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()


async def vector_bytes(settings: Settings) -> tuple[float, float]:
    """Bytes per 384-dimension embedding: in a table (heap + TOAST), and in an HNSW index."""
    conn = await asyncpg.connect(libpq_url(settings.DATABASE_URL))
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        await conn.execute("CREATE TABLE bench_vectors (id bigserial, embedding vector(384))")
        # The inner query refers to g, so each row gets vectors of its own.
        await conn.execute(
            "INSERT INTO bench_vectors (embedding) SELECT (SELECT array_agg(random())::real[]"
            " FROM generate_series(1, 384) WHERE g > 0)::vector FROM generate_series(1, $1) g",
            VECTORS,
        )
        await conn.execute(
            "CREATE INDEX bench_vectors_hnsw ON bench_vectors USING hnsw "
            "(embedding vector_cosine_ops)"
        )
        table = await conn.fetchval("SELECT pg_table_size('bench_vectors')")
        index = await conn.fetchval("SELECT pg_relation_size('bench_vectors_hnsw')")
        return table / VECTORS, index / VECTORS
    finally:
        await conn.close()


async def publish_costs(nc: NATS) -> dict[int, dict[str, float]]:
    """Per stream replica count: p50/p99 latency (ms) of one publish at a time, and publishes/s
    with IN_FLIGHT at a time; rounds alternate between the streams, the best round is kept."""
    js = nc.jetstream(timeout=30)
    payload = str(PAYLOAD).encode()
    for replicas in (1, 3):
        await js.add_stream(
            name=f"BENCH_R{replicas}", subjects=[f"bench.r{replicas}"], num_replicas=replicas
        )
    best: dict[int, dict[str, float]] = {1: {}, 3: {}}
    for _ in range(ROUNDS):
        for replicas in (1, 3):
            subject = f"bench.r{replicas}"
            latencies = []
            for _ in range(LATENCY_PUBLISHES):
                started = time.perf_counter()
                await js.publish(subject, payload)
                latencies.append((time.perf_counter() - started) * 1000)
            latencies.sort()

            async def publish(_n: int, subject: str = subject) -> None:
                await js.publish(subject, payload)

            rate = await flood(publish, THROUGHPUT_PUBLISHES, IN_FLIGHT)
            round_figures = {
                "p50": statistics.median(latencies),
                "p99": latencies[int(0.99 * len(latencies))],
                "rate": rate,
            }
            if not best[replicas] or rate > best[replicas]["rate"]:
                best[replicas] = round_figures
    return best


@asynccontextmanager
async def cluster(root: Path) -> AsyncIterator[NATS]:
    """A 3-node NATS cluster on loopback, and a connection to every node of it."""
    nodes = NatsCluster.on_free_ports(root / "nats-cluster", 3)
    url = await asyncio.to_thread(nodes.start)
    settings = Settings(_env_file=None, NATS_URL=url)
    nc = await connect_nats(settings, "bench-scale-cluster")
    try:
        yield nc
    finally:
        await nc.close()
        await asyncio.to_thread(nodes.remove)


async def bench(root: Path) -> None:
    postgres = EmbeddedPostgres(root)
    nats = EmbeddedNats(root, free_port())
    settings = mesh_settings(root, postgres, nats)
    configure_logging(settings, "bench-scale")
    runs: dict[int, float] = {}
    held: dict[int, int] = {}
    try:
        async with AsyncExitStack() as stack:
            agents = Replicas("agents", settings, root, stack)
            events_replicas = Replicas("events", settings, root, stack)
            for count in REPLICAS:
                address = await agents.grow_to(count)
                # Warm-up: a replica's first runs pay for lazy imports and connections.
                await runs_per_second(settings, address, 4 * count)
                runs[count] = await runs_per_second(settings, address)
                held[count], max_connections = await connections(settings)
                print(f"  runs: {count} agents replicas done ({load()})", flush=True)
            # The clients pick the events replicas: all of them run, and rounds over 1, 2 and 4
            # of them alternate (the median is kept), so a busy moment is shared by every row.
            running = (await events_replicas.grow_to(max(REPLICAS))).split(",")
            rounds: dict[int, list[float]] = {count: [] for count in REPLICAS}
            for _ in range(EVENT_ROUNDS):
                for count in REPLICAS:
                    address = ",".join(running[:count])
                    rounds[count].append(await events_per_second(settings, address))
                print(f"  events: a round over 1, 2, 4 replicas done ({load()})", flush=True)
            events = {count: statistics.median(rates) for count, rates in rounds.items()}
            replicas_load = load()
            table_bytes, index_bytes = await vector_bytes(settings)
        async with cluster(root) as nc:
            costs = await publish_costs(nc)
            cluster_load = load()
    finally:
        nats.stop()
        postgres.stop()

    print(f"\nReplicas on one machine ({os.cpu_count()} CPUs, {replicas_load})")
    print(f"  {'replicas':<10}{'runs/s':>10}{'x1':>8}{'events/s':>12}{'x1':>8}")
    for count in REPLICAS:
        print(
            f"  {count:<10}{runs[count]:>10.1f}{runs[count] / runs[1]:>7.2f}x"
            f"{events[count]:>12.0f}{events[count] / events[1]:>7.2f}x"
        )
    print(
        f"  ({RUNS} echo runs at once, AGENT_WORKERS={settings.AGENT_WORKERS} per replica; "
        f"{EVENTS} PublishEvent, {IN_FLIGHT} in flight, round_robin over the replicas)"
    )
    print(f"\nPostgreSQL (max_connections {max_connections})")
    for count in REPLICAS:
        print(f"  {count} agents replicas: {held[count]} client connections open after the runs")
    print(
        f"  a 384-dimension embedding: {table_bytes:.0f} bytes in the table, {index_bytes:.0f} "
        f"in its HNSW index (m=16, ef_construction=64; {VECTORS} vectors)"
    )
    print(f"\nPublish cost on a 3-node NATS cluster, R1 vs R3 ({cluster_load})")
    print(f"  {'stream':<10}{'p50 ms':>10}{'p99 ms':>10}{'publishes/s':>14}")
    for replicas in (1, 3):
        figures = costs[replicas]
        print(
            f"  {'R' + str(replicas):<10}{figures['p50']:>10.2f}{figures['p99']:>10.2f}"
            f"{figures['rate']:>14.0f}"
        )
    print(
        f"  R3 / R1: latency x{costs[3]['p50'] / costs[1]['p50']:.2f}, "
        f"throughput x{costs[3]['rate'] / costs[1]['rate']:.2f} "
        f"(one at a time: {LATENCY_PUBLISHES}; {IN_FLIGHT} in flight: {THROUGHPUT_PUBLISHES}; "
        f"best of {ROUNDS} alternating rounds)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="amelia-bench-scale-") as tmp:
        asyncio.run(bench(Path(tmp)))


if __name__ == "__main__":
    main()
