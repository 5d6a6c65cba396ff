"""Threads bench: what a list of threads costs — ListThreads of 50 threads with 20 runs each —
and what a client that wants each thread's latest run paid before `Thread.latest_run`: the page,
then one ListRuns per thread (8 in flight, as the TUI did), over gRPC and through the gateway
with the TUI's own `GatewayApi` (its Threads list's load).

Starts its own embedded PostgreSQL and NATS (temp dir, free port), the events and agents
services in this process (their 2 workers idle: nothing is queued), the gateway as a process,
and writes the threads and runs straight into the tables (20 runs a thread, the newest
completed or failed in turn, paused for the BENCH_RARE oldest threads only: a rare status
whose threads come last in the page order, the worst case of a status filter). Prints the median and p90 of each, with the machine's
load. Run it on an older tree with the same file to compare (`PYTHONPATH` of that tree's
packages first; a server without the fields answers the same ListThreads without them).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import create_async_engine

from amelia.v1 import agents_pb2, agents_pb2_grpc
from amelia_agents.models import RunRow, ThreadRow
from amelia_agents.server import build_service as build_agents
from amelia_agents.store import Store
from amelia_cli.tui.gateway import GatewayApi
from amelia_common.db import asyncpg_url, create_engine, session_factory
from amelia_common.embedded import free_port
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings
from bench._processes import service_process
from bench._run import run_in_temp_dir
from bench.agents import events_mesh
from bench.gateway import _wait_http

THREADS = int(os.environ.get("BENCH_THREADS", "50"))
RARE = int(os.environ.get("BENCH_RARE", "3"))
RUNS_EACH = 20
SAMPLES = 40
WARMUP = 5
AT_ONCE = 8
NEWEST = ("COMPLETED", "FAILED")


def newest(t: int) -> str:
    """The status of thread t's newest run: PAUSED for the RARE oldest threads."""
    return "PAUSED" if t < RARE else NEWEST[t % len(NEWEST)]


async def seed(settings: Settings) -> None:
    """THREADS threads of RUNS_EACH runs each, written in two statements."""
    start = datetime.now(UTC) - timedelta(days=1)
    threads, runs = [], []
    for t in range(THREADS):
        tid = uuid.uuid4()
        when = start + timedelta(minutes=t)
        threads.append({"id": tid, "meta": {}, "create_time": when, "update_time": when})
        for r in range(RUNS_EACH):
            last = r == RUNS_EACH - 1
            runs.append(
                {
                    "id": uuid.uuid4(),
                    "workflow": "chat",
                    "thread_id": tid,
                    "input": {"message": f"thread {t} turn {r}"},
                    "status": newest(t) if last else "COMPLETED",
                    "create_time": when + timedelta(seconds=r),
                }
            )
    engine = create_async_engine(asyncpg_url(settings.DATABASE_URL))
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(ThreadRow), threads)
            await conn.execute(insert(RunRow), runs)
    finally:
        await engine.dispose()


def page_statement(status: str = "") -> str:
    """The SQL of a page of 50 threads, most recently active first, with `status` if given, as
    this tree's store builds it (`Store.threads_query`; before it, `_summaries` + the CASE)."""
    builder = getattr(Store, "threads_query", None)
    if builder is not None:
        query = builder(51, None, "update_time desc", None, status)
    else:
        query = Store._summaries().order_by(ThreadRow.update_time.desc(), ThreadRow.id.desc())
        query = query.limit(51)
        if status:
            query = query.where(query.selected_columns.status == status)
    return str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


async def statement_ms(
    settings: Settings, status: str = "", samples: int = SAMPLES
) -> tuple[float, float]:
    """Median and p90 of the execution time PostgreSQL reports for the page's statement (the
    store's, as this tree builds it): the database's part, without the network or Python."""
    sql = page_statement(status)
    engine = create_async_engine(asyncpg_url(settings.DATABASE_URL))
    taken = []
    try:
        async with engine.connect() as conn:
            for i in range(WARMUP + samples):
                plan = (await conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}"))).scalar()
                if i >= WARMUP:
                    taken.append(float(plan[0]["Execution Time"]))
    finally:
        await engine.dispose()
    taken.sort()
    return statistics.median(taken), taken[int(len(taken) * 0.9) - 1]


async def store_ms(settings: Settings) -> tuple[float, float]:
    """The page as the service's store reads it (SQLAlchemy, rows to objects), no gRPC."""
    engine = create_engine(settings)
    try:
        store = Store(session_factory(engine))
        return await timed(lambda: store.list_threads(51, None, "update_time desc"))
    finally:
        await engine.dispose()


async def timed(call: object, samples: int = SAMPLES) -> tuple[float, float]:
    """Median and p90 in ms of `call()` (awaited), after WARMUP calls."""
    taken = []
    for i in range(WARMUP + samples):
        begin = time.perf_counter()
        await call()  # type: ignore[operator]
        if i >= WARMUP:
            taken.append((time.perf_counter() - begin) * 1000)
    taken.sort()
    return statistics.median(taken), taken[int(len(taken) * 0.9) - 1]


async def bench(root: Path) -> None:
    async with events_mesh(root, "threads") as settings:
        agents = await build_agents(settings)
        address = f"127.0.0.1:{await agents.start()}"
        channel = aio_channel(address, settings)
        try:
            await seed(settings)
            stub = agents_pb2_grpc.AgentServiceStub(channel)
            page = agents_pb2.ListThreadsRequest(page_size=50, order_by="update_time desc")

            async def list_threads() -> agents_pb2.ListThreadsResponse:
                reply: agents_pb2.ListThreadsResponse = await stub.ListThreads(page)
                return reply

            gate = asyncio.Semaphore(AT_ONCE)

            async def newest(thread: str) -> None:
                async with gate:
                    await stub.ListRuns(agents_pb2.ListRunsRequest(thread=thread, page_size=1))

            async def list_then_runs() -> None:
                found = await list_threads()
                await asyncio.gather(*(newest(t.name) for t in found.threads))

            shown = (await list_threads()).threads
            has_fields = any(t.HasField("latest_run") for t in shown)
            load = os.getloadavg()[0]
            rows = [("ListThreads, a page of 50", await timed(list_threads))]
            rows.append(("the page, then 50 ListRuns (8 at a time)", await timed(list_then_runs)))
            rows.append(("its SQL statement (EXPLAIN ANALYZE)", await statement_ms(settings)))
            if has_fields:
                rows += await by_status(stub, settings)
            rows.append(("Store.list_threads (SQL, rows read)", await store_ms(settings)))
            rows += await through_gateway(root, settings, address)
            load = max(load, os.getloadavg()[0])
            print(
                f"\n{THREADS} threads x {RUNS_EACH} runs; server "
                f"{'with' if has_fields else 'without'} Thread.status/latest_run; "
                f"1-min load up to {load:.1f} on {os.cpu_count()} cores"
            )
            print(f"{'':48} {'median ms':>10} {'p90 ms':>8}")
            for label, (median, p90) in rows:
                print(f"{label:48} {median:10.1f} {p90:8.1f}")
        finally:
            await channel.close()
            await agents.stop(0.5)


async def by_status(
    stub: agents_pb2_grpc.AgentServiceStub, settings: Settings
) -> list[tuple[str, tuple[float, float]]]:
    """A page of 50 with a status filter: `error` (half the threads), `interrupted` (RARE of
    them, the oldest: the page's walk reaches the end) and `busy` (none): over gRPC, then the
    statement's execution in PostgreSQL. Checks the rare page holds exactly the RARE threads."""
    rows = []
    for status in ("error", "interrupted", "busy"):
        request = agents_pb2.ListThreadsRequest(
            page_size=50, order_by="update_time desc", status=status
        )
        if status == "interrupted":
            found = await stub.ListThreads(request)
            assert len(found.threads) == min(RARE, 50), len(found.threads)
        rows.append(
            (f"ListThreads status={status}", await timed(lambda r=request: stub.ListThreads(r)))
        )
        rows.append((f"  its statement, status={status}", await statement_ms(settings, status)))
    return rows


async def through_gateway(
    root: Path, settings: Settings, agents: str
) -> list[tuple[str, tuple[float, float]]]:
    """The TUI's Threads list through a gateway process: its page alone (what it loads now),
    and the page then each thread's newest run (what it loaded before)."""
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": settings.NATS_URL,
        "DATABASE_URL": "",
        "AMELIA_DATA_DIR": str(root / "gateway"),
        "HOST": "127.0.0.1",
        "AMELIA_API_TOKEN": "",
        "LOG_LEVEL": "WARNING",
        "EVENTS_ADDRESS": settings.EVENTS_ADDRESS,
        "AGENTS_ADDRESS": agents,
        "RAG_ADDRESS": f"127.0.0.1:{free_port()}",
        "PORT": str(port),
    }
    async with service_process(["-m", "amelia_gateway"], env, root):
        url = f"http://127.0.0.1:{port}"
        await _wait_http(url)
        api = GatewayApi(url)
        gate = asyncio.Semaphore(AT_ONCE)

        async def newest(thread: str) -> None:
            async with gate:
                await api.list_runs(thread=thread, page_size=1)

        async def page_then_runs() -> None:
            page = await api.list_threads(50)
            await asyncio.gather(*(newest(str(t["name"])) for t in page["threads"]))

        try:
            return [
                ("TUI list via gateway: the page (now)", await timed(lambda: api.list_threads(50))),
                ("TUI list via gateway: page + 50 ListRuns (before)", await timed(page_then_runs)),
            ]
        finally:
            await api.aclose()


def main() -> None:
    run_in_temp_dir(bench, "threads")


if __name__ == "__main__":
    main()
