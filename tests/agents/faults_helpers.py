"""What the fault tests of the run queue share: worker pools in this process (each with its own
NATS connection, engine and checkpointer, like separate processes), bursts of runs, and waiting
until every run of a burst ended (naming the ones that did not)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from agents_helpers import S, Stub, serve_agents
from nats.aio.client import Client as NATS

from amelia_agents import queue
from amelia_agents.checkpoints import open_checkpointer
from amelia_agents.store import Store
from amelia_agents.worker import WorkerPool, build_workers
from amelia_common.db import create_engine, session_factory
from amelia_common.eventlog import EventLog, StartAt
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings


def worker_env(queue_stream: str) -> dict[str, str]:
    """The environment of a test's `python -m amelia_agents.worker` processes on its own queue,
    with the agents tests' workflows and an ack wait of 2 s."""
    return {
        "RUNS_QUEUE_STREAM": queue_stream,
        "RUN_ACK_WAIT_SECONDS": "2",
        "AGENT_WORKFLOW_MODULES": "agent_test_workflows",
    }


@asynccontextmanager
async def agents_without_workers(
    infra: object, events_address: str, queue_stream: str, **settings: object
) -> AsyncIterator[Stub]:
    """An agents service with no workers of its own, on `queue_stream` (as `worker_env`)."""
    served: Settings = infra.settings(  # type: ignore[attr-defined]
        EVENTS_ADDRESS=events_address,
        AGENT_WORKERS=0,
        RUNS_QUEUE_STREAM=queue_stream,
        RUN_ACK_WAIT_SECONDS=2,
        AGENT_WORKFLOW_MODULES=["agent_test_workflows"],
        **settings,
    )
    async with serve_agents(served) as stub:
        yield stub


FINISHED = (S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED, S.RUN_STATUS_CANCELLED)
TERMINAL_EVENTS = ["run.completed", "run.failed", "run.cancelled"]


@asynccontextmanager
async def worker_pools(
    settings: Settings, pools: int, loops: int
) -> AsyncIterator[list[WorkerPool]]:
    """`pools` independent worker pools of `loops` loops each, racing on the same queue."""
    started: list[WorkerPool] = []
    closers: list[object] = []
    try:
        for i in range(pools):
            nc = await connect_nats(settings, f"test-pool-{i}")
            engine = create_engine(settings)
            cp_pool, saver = await open_checkpointer(settings, max_size=loops + 1)
            closers.append((nc, engine, cp_pool))
            pool = await build_workers(
                settings,
                nc,
                engine,
                Store(session_factory(engine)),
                saver,
                loops,
                name=f"test-pool-{i}",
            )
            started.append(pool)
        yield started
    finally:
        for pool in started:
            await pool.stop()
        for nc, engine, cp_pool in closers:  # type: ignore[misc]
            with contextlib.suppress(Exception):
                await nc.drain()
            await cp_pool.close()
            await engine.dispose()


async def burst(
    stub: Stub, count: int, workflow: str = "workflows/echo", retry: bool = False
) -> list[str]:
    """`count` CreateRuns at once (each on its own new thread); the runs' names.

    With `retry`, each is sent with a request id and sent again while the mesh answers
    UNAVAILABLE (as a client does while NATS or PostgreSQL comes back).
    """

    async def one(i: int) -> S.Run:
        request = S.CreateRunRequest(run=S.Run(workflow=workflow), request_id=uuid.uuid4().hex)
        request.run.input.update({"message": f"burst run {i}"})
        deadline = asyncio.get_running_loop().time() + 120
        while True:
            try:
                return (await stub.CreateRun(request, timeout=30)).run
            except grpc.aio.AioRpcError as exc:
                retriable = exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.INTERNAL,  # until the shared interceptor maps every outage
                )
                if not retry or not retriable or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    runs = await asyncio.gather(*(one(i) for i in range(count)))
    return [run.name for run in runs]


@dataclass
class Outcome:
    runs: dict[str, S.Run]

    def statuses(self) -> Counter[str]:
        return Counter(S.RunStatus.Name(r.status) for r in self.runs.values())


async def wait_all_finished(stub: Stub, names: list[str], timeout: float = 180) -> Outcome:
    """Every run of `names` once all have ended; else AssertionError naming the stuck ones."""
    deadline = asyncio.get_running_loop().time() + timeout
    runs: dict[str, S.Run] = {}
    while True:
        for name in names:
            if name not in runs or runs[name].status not in FINISHED:
                with contextlib.suppress(Exception):
                    runs[name] = (await stub.GetRun(S.GetRunRequest(name=name), timeout=10)).run
        stuck = [n for n in names if n not in runs or runs[n].status not in FINISHED]
        if not stuck:
            return Outcome(runs)
        if asyncio.get_running_loop().time() > deadline:
            details = [
                f"{n} {S.RunStatus.Name(runs[n].status) if n in runs else '?'} "
                f"attempt {runs[n].attempt if n in runs else '?'}"
                for n in stuck[:10]
            ]
            raise AssertionError(f"{len(stuck)} of {len(names)} runs never ended: {details}")
        await asyncio.sleep(0.2)


async def terminal_events(
    settings: Settings, after: int, runs: Collection[str] = (), timeout: float = 60
) -> Counter[str]:
    """How many terminal events (`run.completed|failed|cancelled`) each run has in the log,
    once each of `runs` has one (or `timeout` passed). A worker stores a run's end, then
    publishes its end event: GetRun may say COMPLETED a moment before the log does."""
    deadline = asyncio.get_running_loop().time() + timeout
    nc = await connect_nats(settings, "test-terminal-events")
    try:
        log = EventLog(nc, settings, source="test")
        while True:
            counts: Counter[str] = Counter()
            async with log.read(
                TERMINAL_EVENTS, "runs/*", StartAt.after(after), follow=False
            ) as reader:
                async for event in reader:
                    counts[event.subject] += 1
            if all(counts[run] for run in runs) or asyncio.get_running_loop().time() > deadline:
                return counts
            await asyncio.sleep(0.2)
    finally:
        await nc.drain()


async def last_sequence(settings: Settings) -> int:
    nc = await connect_nats(settings, "test-last-sequence")
    try:
        info = await nc.jetstream().stream_info(settings.EVENTS_STREAM)
        return int(info.state.last_seq)
    finally:
        await nc.drain()


def run_uuid(name: str) -> uuid.UUID:
    return uuid.UUID(name.removeprefix("runs/"))


async def purge_queue(settings: Settings) -> None:
    """Drop every job of the settings' queue, as a NATS that lost them would."""
    nc = await connect_nats(settings, "test-purge")
    try:
        await nc.jetstream().purge_stream(settings.RUNS_QUEUE_STREAM)
    finally:
        await nc.drain()


async def jobs_per_run(settings: Settings) -> dict[uuid.UUID, int]:
    """How many jobs each run has in the settings' queue."""
    nc = await connect_nats(settings, "test-jobs")
    try:
        return await queue.jobs_by_run(nc.jetstream(), settings)
    finally:
        await nc.drain()


async def all_jobs_delivered(nc: NATS, settings: Settings, timeout: float = 60) -> None:
    """Wait until the queue's consumer has handed every job to a worker at least once."""
    js = nc.jetstream()
    deadline = asyncio.get_running_loop().time() + timeout
    while (info := await js.consumer_info(settings.RUNS_QUEUE_STREAM, queue.CONSUMER)).num_pending:
        assert asyncio.get_running_loop().time() < deadline, info
        await asyncio.sleep(0.1)


def node_b_started(record: Path, pid: int | None = None) -> bool:
    """Whether `test-steps`' node b started (in process `pid`, if given): it writes its line
    to the run's `record` file."""
    return record.exists() and ("b " if pid is None else f"b {pid}\n") in record.read_text()


async def wait_node_b_started(record: Path, pid: int | None = None, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not node_b_started(record, pid):
        assert asyncio.get_running_loop().time() < deadline, "node b never started"
        await asyncio.sleep(0.05)
