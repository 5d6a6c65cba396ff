"""Eager start (`worker.Eager`): the agents process that takes a CreateRun, with an idle worker
loop, starts the run itself right after the commit; its job is still queued in the same
transaction, so the queue's rules take the run over whenever that process dies. Real
`python -m amelia_agents` processes (API and one loop) SIGKILLed at each step of an eager start,
a standalone worker finishing the run; two such processes racing on one queue."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from agents_helpers import (
    S,
    WorkerProcess,
    collect,
    create_run,
    data,
    rpc_error,
    running_agents,
    types,
    wait_status,
)
from faults_helpers import burst, last_sequence, run_uuid, terminal_events, wait_all_finished
from sqlalchemy import text
from test_agents_queue_faults import OwnPostgres, own_postgres

from amelia.v1 import agents_pb2_grpc
from amelia_agents import queue
from amelia_agents.locks import thread_lock_key
from amelia_common.db import create_engine
from amelia_common.embedded import free_port
from amelia_common.grpc_client import aio_channel
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

HERE = Path(__file__).parent
ACK_WAIT = "2"
__all__ = ["own_postgres"]  # a fixture of test_agents_queue_faults


class Mesh:
    """Agents processes and standalone workers on a queue of the test's own."""

    def __init__(self, infra: Any, events_address: str, tmp_path: Path) -> None:
        self.queue = f"AMELIA_RUNS_EAGER_{uuid.uuid4().hex[:8]}"
        self.settings: Settings = infra.settings(
            EVENTS_ADDRESS=events_address, RUNS_QUEUE_STREAM=self.queue, AGENT_EAGER_START=True
        )
        self.tmp_path = tmp_path
        self.env = {
            "EVENTS_ADDRESS": events_address,
            "RUNS_QUEUE_STREAM": self.queue,
            "RUN_ACK_WAIT_SECONDS": ACK_WAIT,
            "RUN_HEARTBEAT_TIMEOUT_SECONDS": "3",
            "AGENT_WORKFLOW_MODULES": "agent_test_workflows",
            "AGENT_WORKERS": "1",
            "AGENT_EAGER_START": "true",  # (off by default)
        }
        self.processes: list[WorkerProcess] = []

    def worker(self, name: str) -> WorkerProcess:
        """A standalone worker (one loop), no API."""
        process = WorkerProcess(self.settings, self.tmp_path / f"{name}.log", self.env, [HERE])
        self.processes.append(process)
        return process

    @asynccontextmanager
    async def agents(self, name: str) -> AsyncIterator[tuple[WorkerProcess, Any]]:
        """`python -m amelia_agents` (API and one worker loop) and a stub of its API."""
        port = free_port()
        env = {
            **self.env,
            "AGENTS_GRPC_PORT": str(port),
            "AGENTS_METRICS_PORT": "0",
            "GRPC_SHUTDOWN_GRACE_SECONDS": "1",
        }
        process = WorkerProcess(
            self.settings, self.tmp_path / f"{name}.log", env, [HERE], module="amelia_agents"
        )
        self.processes.append(process)
        await process.wait_log("listening")
        await process.ready()
        async with aio_channel(f"127.0.0.1:{port}", self.settings) as channel:
            yield process, agents_pb2_grpc.AgentServiceStub(channel)

    async def close(self) -> None:
        for process in self.processes:
            if process.proc.poll() is None:
                process.kill()
            await process.stop()


@asynccontextmanager
async def mesh_of(infra: Any, events_address: str, tmp_path: Path) -> AsyncIterator[Mesh]:
    mesh = Mesh(infra, events_address, tmp_path)
    try:
        yield mesh
    finally:
        await mesh.close()


async def sql(settings: Settings, statement: str, **params: Any) -> list[Any]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(statement), params)).all())
    finally:
        await engine.dispose()


async def consumer(settings: Settings) -> Any:
    nc = await connect_nats(settings, "test-eager-consumer")
    try:
        return await nc.jetstream().consumer_info(settings.RUNS_QUEUE_STREAM, queue.CONSUMER)
    finally:
        await nc.drain()


async def pause_queue(settings: Settings, paused: bool) -> None:
    """Pause (for an hour) or resume the queue's shared consumer: no job delivered meanwhile."""
    nc = await connect_nats(settings, "test-eager-pause")
    try:
        js, stream = nc.jetstream(), settings.RUNS_QUEUE_STREAM
        if paused:
            until = datetime.now(UTC) + timedelta(hours=1)
            await js.pause_consumer(stream, queue.CONSUMER, until.strftime("%Y-%m-%dT%H:%M:%SZ"))
        else:
            await js.resume_consumer(stream, queue.CONSUMER)
    finally:
        await nc.drain()


def steps(tmp_path: Path) -> dict[str, str]:
    """`workflows/test-steps`' input: nodes recorded as `<node> <pid>`, b held until released."""
    return {"record": str(tmp_path / "record"), "release": str(tmp_path / "release")}


def executions(tmp_path: Path) -> list[tuple[str, int]]:
    lines = (tmp_path / "record").read_text().splitlines()
    return [(node, int(pid)) for node, pid in (line.split() for line in lines)]


async def wait_node(tmp_path: Path, node: str, pid: int, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    record = tmp_path / "record"
    while not (record.exists() and f"{node} {pid}\n" in record.read_text()):
        assert asyncio.get_running_loop().time() < deadline, f"node {node} never started in {pid}"
        await asyncio.sleep(0.05)


async def worker_of(settings: Settings, name: str) -> str:
    rows = await sql(settings, "SELECT worker FROM runs WHERE id = :id", id=run_uuid(name))
    return str(rows[0][0])


async def test_a_run_is_started_by_the_process_that_took_it_and_ends_once(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    after = await last_sequence(infra.settings())
    async with mesh_of(infra, events_address, tmp_path) as mesh, mesh.agents("a") as (a, api):
        created = await create_run(api, workflow="workflows/echo", input={"message": "eager"})
        assert created.status == S.RUN_STATUS_QUEUED  # the reply does not wait for the start
        done = await wait_status(api, created.name, S.RUN_STATUS_COMPLETED)
        assert done.attempt == 1
        # Started by a's eager start (a loop's pick-up would name the loop: `<host>:<pid>/0`).
        assert (await worker_of(mesh.settings, created.name)).endswith(f":{a.proc.pid}/eager")
        events = await collect(api, created.name)
        assert types(events).count("workflow.started") == 1
        assert types(events)[-1] == "run.completed"
        ends = await terminal_events(mesh.settings, after=after, runs=[created.name])
        assert ends[created.name] == 1
        # Its job was acked: nothing left in the queue for it.
        deadline = asyncio.get_running_loop().time() + 30
        while (await consumer(mesh.settings)).num_ack_pending or (
            await consumer(mesh.settings)
        ).num_pending:
            assert asyncio.get_running_loop().time() < deadline, await consumer(mesh.settings)
            await asyncio.sleep(0.1)


async def test_killed_before_its_commit_an_eager_start_leaves_nothing(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    """Killed while it holds the run's and thread's locks, its recording statement waiting for
    the thread's row (a test transaction holds it): no run recorded, the locks gone; the
    thread takes the next run."""
    async with mesh_of(infra, events_address, tmp_path) as mesh:
        async with mesh.agents("a") as (a, api):
            first = await create_run(api, workflow="workflows/echo", input={"message": "one"})
            await wait_status(api, first.name, S.RUN_STATUS_COMPLETED)
            thread = uuid.UUID(first.thread.removeprefix("threads/"))
            key = thread_lock_key(thread)
            engine = create_engine(mesh.settings)
            try:
                async with engine.connect() as holder:
                    await holder.execute(
                        text("SELECT id FROM threads WHERE id = :id FOR UPDATE"), {"id": thread}
                    )
                    call = asyncio.create_task(
                        create_run(
                            api,
                            workflow="workflows/echo",
                            thread=first.thread,
                            input={"message": "two"},
                        )
                    )
                    await thread_locked_and_waiting(mesh.settings, thread)
                    a.kill()
                    await holder.rollback()
            finally:
                await engine.dispose()
            try:
                await asyncio.wait_for(call, 30)
                raise AssertionError("CreateRun answered from a killed process")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        await until_sql(
            mesh.settings,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND objsubid = 1 AND classid = :high AND objid = :low",
            0,
            high=key >> 32,
            low=key & 0xFFFFFFFF,
        )
        runs = await sql(mesh.settings, "SELECT id FROM runs WHERE thread_id = :t", t=thread)
        assert [row[0] for row in runs] == [run_uuid(first.name)]
        async with mesh.agents("b") as (_, api):
            again = await create_run(
                api, workflow="workflows/echo", thread=first.thread, input={"message": "three"}
            )
            done = await wait_status(api, again.name, S.RUN_STATUS_COMPLETED, timeout=60)
            assert done.attempt == 1


async def thread_locked_and_waiting(settings: Settings, thread: uuid.UUID) -> None:
    """Until an eager start holds the thread's lock and its recording statement waits for a
    row lock (the test's transaction holds the thread's row)."""
    key = thread_lock_key(thread)
    await until_sql(
        settings,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND objsubid = 1 AND classid = :high AND objid = :low",
        1,
        high=key >> 32,
        low=key & 0xFFFFFFFF,
    )
    await until_sql(
        settings,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()",
        1,
    )


async def until_sql(settings: Settings, statement: str, want: int, **params: Any) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while (found := (await sql(settings, statement, **params))[0][0]) != want:
        assert asyncio.get_running_loop().time() < deadline, (statement, found)
        await asyncio.sleep(0.05)


async def killed_mid_run(mesh: Mesh, tmp_path: Path, adopted: bool) -> tuple[S.Run, list[Any], int]:
    """A held `test-steps` run started eagerly by process a, a killed in node b — its job
    adopted by a's loop, or (`adopted` False) still in the queue (the consumer paused) —, then
    a standalone worker and the release: the run ended, its events, a's pid."""
    async with mesh.agents("a") as (a, api):
        if not adopted:
            await pause_queue(mesh.settings, True)
        run = await create_run(api, workflow="workflows/test-steps", input=steps(tmp_path))
        stream = asyncio.create_task(collect(api, run.name, timeout=120))
        await wait_node(tmp_path, "b", a.proc.pid)
        info = await consumer(mesh.settings)
        # Adopted: the job delivered to a's only loop; else still waiting in the queue.
        assert (info.num_ack_pending, info.num_pending) == ((1, 0) if adopted else (0, 1))
        a.kill()
        stream.cancel()
    worker = mesh.worker("w")
    await worker.ready()
    if not adopted:
        await pause_queue(mesh.settings, False)
    (tmp_path / "release").touch()
    async with mesh.agents("c") as (_, api):
        done = await wait_status(api, run.name, S.RUN_STATUS_COMPLETED, timeout=90)
        events = await collect(api, run.name)
    return done, events, a.proc.pid


@pytest.mark.parametrize(
    "adopted", [True, False], ids=["mid-run, job adopted", "after the commit, job not adopted"]
)
async def test_killed_after_its_commit_the_run_ends_once(
    infra: Any, events_address: str, tmp_path: Path, adopted: bool
) -> None:
    after = await last_sequence(infra.settings())
    async with mesh_of(infra, events_address, tmp_path) as mesh:
        done, events, pid = await killed_mid_run(mesh, tmp_path, adopted=adopted)
        assert_resumed_once(done, events, tmp_path, pid)
        ends = await terminal_events(mesh.settings, after=after, runs=[done.name])
        assert ends[done.name] == 1


def assert_resumed_once(done: S.Run, events: list[Any], tmp_path: Path, pid: int) -> None:
    """The eager start was attempt 1 (a pick-up, recorded claimed); the worker's attempt 2
    went on from a's checkpoint: a not again, b again, c; one start, one end."""
    assert done.attempt == 2
    assert done.output["done"] == ["a", "b", "c"]
    ran = executions(tmp_path)
    assert [node for node, _ in ran] == ["a", "b", "b", "c"]
    assert [p == pid for _, p in ran] == [True, True, False, False]
    assert types(events).count("workflow.started") == 1
    assert [d["attempt"] for d in data(events, "run.resumed")] == [2]
    assert types(events).count("run.completed") == 1
    assert types(events)[-1] == "run.completed"


async def test_two_processes_racing_on_one_queue_end_each_run_once(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    after = await last_sequence(infra.settings())
    async with (
        mesh_of(infra, events_address, tmp_path) as mesh,
        mesh.agents("a") as (_, a),
        mesh.agents("b") as (_, b),
    ):
        firsts = await asyncio.gather(burst(a, 10), burst(b, 10))
        names = firsts[0] + firsts[1]
        outcome = await wait_all_finished(a, names)
        assert outcome.statuses() == {"RUN_STATUS_COMPLETED": 20}
        assert {run.attempt for run in outcome.runs.values()} == {1}
        ends = await terminal_events(mesh.settings, after=after, runs=names)
        assert {name: ends[name] for name in names} == {name: 1 for name in names}
        workers = {await worker_of(mesh.settings, name) for name in names}
        assert any(w.endswith("/eager") for w in workers), workers


async def test_postgres_stopped_during_an_eager_create_run_answers_unavailable_and_records_nothing(
    own_postgres: OwnPostgres,
) -> None:
    """PostgreSQL stops while a CreateRun holds its eager start's locks, its recording statement
    waiting for the thread's row: UNAVAILABLE, no run recorded; once it is back, the thread
    takes the next run (eagerly or not: the loop may be busy with a job the outage gave back)."""
    postgres, settings = own_postgres.mesh(
        f"AMELIA_RUNS_EAGER_PG_{uuid.uuid4().hex[:6]}", 1, AGENT_EAGER_START=True
    )
    engine = create_engine(settings)
    # The test's connection is opened before the service's: a fast shutdown signals the newest
    # backends first, so the service's waiting statement is told to end before the holder's
    # backend ends and lets the row go. The other way round (CI, once), the statement got the
    # row in that gap and committed: a run recorded and answered, not the outage under test.
    holder = await engine.connect()
    async with running_agents(settings) as agents:
        api = agents.stub
        first = await create_run(api, workflow="workflows/echo", input={"message": "one"})
        await wait_status(api, first.name, S.RUN_STATUS_COMPLETED)
        thread = uuid.UUID(first.thread.removeprefix("threads/"))
        try:
            await holder.execute(
                text("SELECT id FROM threads WHERE id = :id FOR UPDATE"), {"id": thread}
            )
            request = S.CreateRunRequest(run=S.Run(workflow="workflows/echo", thread=first.thread))
            request.run.input.update({"message": "two"})
            call = asyncio.create_task(rpc_error(api.CreateRun(request, timeout=30)))
            await thread_locked_and_waiting(settings, thread)
            await asyncio.to_thread(postgres.stop)
            error = await asyncio.wait_for(call, 40)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            with contextlib.suppress(Exception):
                await holder.close()
        finally:
            await engine.dispose()
        await asyncio.to_thread(postgres.start)
        runs = await sql(settings, "SELECT id FROM runs WHERE thread_id = :t", t=thread)
        assert [row[0] for row in runs] == [run_uuid(first.name)]
        again = await create_run(
            api, workflow="workflows/echo", thread=first.thread, input={"message": "two"}
        )
        done = await wait_status(api, again.name, S.RUN_STATUS_COMPLETED, timeout=60)
        assert done.attempt == 1
