"""An accepted run always finishes: a burst of runs raced by several worker pools, a NATS
restart, a PostgreSQL outage, a lost queue message, an answer given while NATS is down and jobs
delivered many times each end with every run finished, its end published once.

Each test has its own queue stream (the reconciler of a queue only looks at that queue's runs),
a short ack wait, and a reconciler that looks often."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from agents_helpers import (
    S,
    WorkerProcess,
    create_run,
    rpc_error,
    running_agents,
    serve_agents,
    wait_status,
)
from faults_helpers import (
    all_jobs_delivered,
    burst,
    jobs_per_run,
    last_sequence,
    purge_queue,
    run_uuid,
    terminal_events,
    wait_all_finished,
    wait_node_b_started,
    worker_pools,
)
from frozen_postgres import frozen
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from amelia_agents import queue
from amelia_agents.checkpoints import open_checkpointer
from amelia_agents.store import Store
from amelia_agents.sweeper import Sweeper
from amelia_common.db import create_engine, session_factory
from amelia_common.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedStartError, free_port
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

RUNS = 60
TEST_WORKFLOWS = "agent_test_workflows"


def uuid_key() -> str:
    return uuid.uuid4().hex


def fault_settings(infra: Any, events_address: str, queue_name: str, **overrides: Any) -> Settings:
    settings: Settings = infra.settings(
        **{
            "EVENTS_ADDRESS": events_address,
            "AGENT_WORKERS": 0,
            "RUNS_QUEUE_STREAM": queue_name,
            "RUN_ACK_WAIT_SECONDS": 3,
            "RUN_SWEEP_INTERVAL_SECONDS": 0.5,
            "RUN_REQUEUE_AFTER_SECONDS": 2,
            "RUN_RETRY_BACKOFF_SECONDS": 0.2,
            "AGENT_WORKFLOW_MODULES": [TEST_WORKFLOWS],
            **overrides,
        }
    )
    return settings


@pytest.mark.slow
async def test_a_burst_of_runs_raced_by_several_worker_pools_all_finish(
    infra: Any, events_address: str
) -> None:
    # No reconciler to the rescue: the workers alone must never drop a job of a QUEUED run,
    # however the CreateRun commits and the claims interleave.
    settings = fault_settings(
        infra, events_address, "AMELIA_RUNS_STRESS", RUN_REQUEUE_AFTER_SECONDS=3600
    )
    async with serve_agents(settings) as api, worker_pools(settings, pools=3, loops=2):
        names = await burst(api, RUNS)
        outcome = await wait_all_finished(api, names, timeout=150)
    assert outcome.statuses() == {"RUN_STATUS_COMPLETED": RUNS}


@pytest.mark.slow
async def test_a_nats_restart_mid_burst_loses_no_run(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    settings = fault_settings(infra, events_address, "AMELIA_RUNS_NATS", NATS_URL=nats.start())
    try:
        async with serve_agents(settings) as api, worker_pools(settings, pools=3, loops=2):
            names = await burst(api, RUNS // 2)
            await asyncio.to_thread(nats.stop)
            await asyncio.to_thread(nats.start)
            back = time.monotonic()
            # Clients retry (same request id) while the mesh reconnects.
            names += await burst(api, RUNS // 2, retry=True)
            outcome = await wait_all_finished(api, names, timeout=180)
            print(f"\nNATS restart: all {RUNS} runs ended {time.monotonic() - back:.1f}s after")
            ends = await terminal_events(settings, after=0, runs=names)
    finally:
        await asyncio.to_thread(nats.stop)
    assert outcome.statuses() == {"RUN_STATUS_COMPLETED": RUNS}
    assert {name: ends[name] for name in names} == {name: 1 for name in names}


async def test_runs_whose_jobs_were_lost_are_requeued_and_finish(
    infra: Any, events_address: str
) -> None:
    settings = fault_settings(infra, events_address, "AMELIA_RUNS_LOST")
    async with serve_agents(settings) as api:
        names = await burst(api, 6)
        await purge_queue(settings)  # the jobs are gone: a NATS that lost them, an operator…
        cancelled = (await api.CancelRun(S.CancelRunRequest(name=names[0]))).run
        assert cancelled.status == S.RUN_STATUS_CANCELLED
        async with worker_pools(settings, pools=1, loops=2):
            outcome = await wait_all_finished(api, names, timeout=90)
        ends = await terminal_events(settings, after=0, runs=names)
    assert outcome.statuses() == {"RUN_STATUS_COMPLETED": 5, "RUN_STATUS_CANCELLED": 1}
    assert {name: ends[name] for name in names} == {name: 1 for name in names}


async def test_reconcilers_racing_queue_each_lost_run_once(infra: Any, events_address: str) -> None:
    """Every replica runs a reconciler: together they put one new job per lost run."""
    settings = fault_settings(infra, events_address, "AMELIA_RUNS_RACING_SWEEPERS")
    async with serve_agents(settings) as api:
        names = await burst(api, 8)
        await purge_queue(settings)
        engines = [create_engine(settings) for _ in range(3)]
        clients = [await connect_nats(settings, f"test-sweeper-{i}") for i in range(3)]
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while len(jobs := await jobs_per_run(settings)) < len(names):
                assert asyncio.get_running_loop().time() < deadline, jobs
                sweepers = [
                    Sweeper(settings, engine, Store(session_factory(engine)), nc.jetstream())
                    for engine, nc in zip(engines, clients, strict=True)
                ]
                await asyncio.gather(*(s.sweep() for s in sweepers))
        finally:
            for nc in clients:
                await nc.drain()
            for engine in engines:
                await engine.dispose()
        assert {f"runs/{run}": count for run, count in jobs.items()} == {n: 1 for n in names}
        async with worker_pools(settings, pools=1, loops=2):
            outcome = await wait_all_finished(api, names, timeout=90)
    assert outcome.statuses() == {"RUN_STATUS_COMPLETED": 8}


async def test_a_job_delivered_many_times_does_not_use_up_the_runs_attempts(
    infra: Any, events_address: str
) -> None:
    """Deliveries that found the run busy (another worker's lock) are not pick-ups."""
    settings = fault_settings(infra, events_address, "AMELIA_RUNS_REDELIVERED")
    async with serve_agents(settings) as api:
        run = await create_run(api, workflow="workflows/echo", input={"message": "again"})
        nc = await connect_nats(settings, "test-busy-worker")
        try:
            # A worker that finds the run locked gives the job back: here, more times than a run
            # may be picked up.
            psub = await nc.jetstream().pull_subscribe_bind(
                durable=queue.CONSUMER, stream=settings.RUNS_QUEUE_STREAM
            )
            delivered = 0
            while delivered <= settings.RUN_MAX_ATTEMPTS:
                [msg] = await psub.fetch(1, timeout=10)
                delivered = msg.metadata.num_delivered
                await msg.nak()
            await psub.unsubscribe()
        finally:
            await nc.drain()
        async with worker_pools(settings, pools=1, loops=1):
            done = await wait_status(api, run.name, *FINISHED, timeout=60)
    assert (S.RunStatus.Name(done.status), done.error) == ("RUN_STATUS_COMPLETED", "")
    assert done.attempt == 1


FINISHED = (S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED, S.RUN_STATUS_CANCELLED)
# With PostgreSQL frozen, a new connection and a wait for a pooled one each give up after 2 s.
FROZEN_TIMEOUTS = {"DATABASE_CONNECT_TIMEOUT_SECONDS": 2, "DATABASE_POOL_TIMEOUT_SECONDS": 2}


async def test_an_answer_given_while_nats_is_down_is_kept_and_the_run_finishes(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    settings = fault_settings(
        infra, events_address, "AMELIA_RUNS_RESUME", NATS_URL=nats.start(), AGENT_WORKERS=1
    )
    try:
        async with serve_agents(settings) as api:
            run = await create_run(api, workflow="workflows/test-ask", input={"question": "Go?"})
            await wait_status(api, run.name, S.RUN_STATUS_PAUSED, timeout=60)
            await asyncio.to_thread(nats.stop)
            request = S.ResumeRunRequest(name=run.name)
            request.answer.string_value = "yes"
            resumed = (await api.ResumeRun(request, timeout=60)).run
            assert resumed.status == S.RUN_STATUS_QUEUED  # recorded; queued once NATS is back
            await asyncio.to_thread(nats.start)
            done = await wait_status(api, run.name, *FINISHED, timeout=90)
    finally:
        await asyncio.to_thread(nats.stop)
    assert S.RunStatus.Name(done.status) == "RUN_STATUS_COMPLETED"
    assert done.output["result"] == "answer was yes"


@dataclass
class OwnPostgres:
    """A PostgreSQL of the test's own to stop and start, and the mesh's settings on it."""

    postgres: EmbeddedPostgres
    url: str
    infra: Any
    events_address: str

    def mesh(
        self, queue_name: str, workers: int, **overrides: Any
    ) -> tuple[EmbeddedPostgres, Settings]:
        """That PostgreSQL, and `fault_settings` on it: `queue_name`, `workers` in process."""
        return self.postgres, fault_settings(
            self.infra,
            self.events_address,
            queue_name,
            DATABASE_URL=self.url,
            AGENT_WORKERS=workers,
            **overrides,
        )


@pytest.fixture
async def own_postgres(
    infra: Any, events_address: str, tmp_path: Path
) -> AsyncIterator[OwnPostgres]:
    """A PostgreSQL of the test's own (stopped at the end). Its initdb is tried once more in a
    fresh folder if it crashes (seen once in CI: initdb died with SIGSEGV, before any of ours)."""
    postgres = EmbeddedPostgres(tmp_path / "pg")
    try:
        url = await asyncio.to_thread(postgres.start)
    except EmbeddedStartError:
        postgres = EmbeddedPostgres(tmp_path / "pg-again")
        url = await asyncio.to_thread(postgres.start)
    try:
        yield OwnPostgres(postgres, url, infra, events_address)
    finally:
        await asyncio.to_thread(postgres.stop)


async def first_statements(engine: AsyncEngine, saver: AsyncPostgresSaver) -> tuple[Any, Any]:
    """A statement on a pooled SQLAlchemy connection and a checkpoint read on a pooled psycopg
    one (of a thread without checkpoints)."""
    async with engine.connect() as conn:
        one = await conn.scalar(text("SELECT 1"))
    config: Any = {"configurable": {"thread_id": str(uuid.uuid4()), "checkpoint_ns": ""}}
    return one, await saver.aget_tuple(config)


@pytest.mark.slow
async def test_a_postgres_outage_with_runs_in_flight_loses_and_fails_no_run(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    postgres, settings = own_postgres.mesh("AMELIA_RUNS_POSTGRES", workers=2)
    release = tmp_path / "release"
    steps = {"record": str(tmp_path / "record"), "release": str(release)}
    nc = await connect_nats(settings, "test-outage")
    engine = create_engine(settings)
    checkpoints, saver = await open_checkpointer(settings, max_size=2)
    try:
        async with (
            running_agents(settings) as agents,
            worker_pools(settings, pools=1, loops=2) as pools,
        ):
            api = agents.stub
            # Two runs held in a node (two loops busy, two idle) and two that already ended.
            held = [
                (await create_run(api, workflow="workflows/test-steps", input=steps)).name
                for _ in range(2)
            ]
            done = await burst(api, 2)
            await wait_all_finished(api, done)
            for name in held:
                await wait_status(api, name, S.RUN_STATUS_RUNNING)
            await agents.wait_health("dependency/workers", "SERVING")
            assert await first_statements(engine, saver) == (1, None)  # idle connections in both

            await asyncio.to_thread(postgres.stop)
            # Jobs arrive while PostgreSQL is down: the idle loops take them and must survive.
            for name in held:
                await queue.enqueue(nc.jetstream(), settings, run_uuid(name), "outage")
            await agents.wait_health("amelia.v1.AgentService", "NOT_SERVING")
            await agents.wait_health("dependency/workers", "NOT_SERVING")
            await all_jobs_delivered(nc, settings)

            await asyncio.to_thread(postgres.start)
            # The pools check no connection with a round trip when they hand it out: those the
            # restart closed are replaced all the same, so the first statements work.
            assert await first_statements(engine, saver) == (1, None)
            back = time.monotonic()
            release.touch()
            later = await burst(api, 4, retry=True)
            outcome = await wait_all_finished(api, held + done + later)
            print(f"\nPostgreSQL restart: every run ended {time.monotonic() - back:.1f}s after")
            await agents.wait_health("amelia.v1.AgentService", "SERVING")
            await agents.wait_health("dependency/workers", "SERVING")
            # Every loop of the other pool is alive too (what its health entry would say).
            assert [await pool.can_work() for pool in pools] == [True]
    finally:
        await nc.drain()
        await engine.dispose()
        await checkpoints.close()
    failures = {name: run.error for name, run in outcome.runs.items() if run.error}
    assert outcome.statuses() == {"RUN_STATUS_COMPLETED": 8}, failures


@pytest.mark.slow
async def test_a_standalone_worker_outlives_a_postgres_outage_and_says_so(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    postgres, settings = own_postgres.mesh("AMELIA_RUNS_STANDALONE", workers=0)
    worker = WorkerProcess(
        settings,
        tmp_path / "worker.log",
        env={
            "RUNS_QUEUE_STREAM": settings.RUNS_QUEUE_STREAM,
            "RUN_ACK_WAIT_SECONDS": str(settings.RUN_ACK_WAIT_SECONDS),
            "RUN_RETRY_BACKOFF_SECONDS": str(settings.RUN_RETRY_BACKOFF_SECONDS),
            "AGENT_WORKERS": "2",
        },
    )
    nc = await connect_nats(settings, "test-standalone-outage")
    try:
        await worker.ready()
        async with serve_agents(settings) as api:
            first = await create_run(api, workflow="workflows/echo", input={"message": "before"})
            await wait_status(api, first.name, S.RUN_STATUS_COMPLETED, timeout=60)
            await asyncio.to_thread(postgres.stop)
            # Jobs while PostgreSQL is down: both loops fail on them, and must go on.
            for _ in range(4):
                await queue.enqueue(nc.jetstream(), settings, run_uuid(first.name), uuid_key())
            await all_jobs_delivered(nc, settings)
            await worker.wait_log("workers cannot work")
            await asyncio.to_thread(postgres.start)
            await worker.wait_log("workers can work", after="workers cannot work")
            names = await burst(api, 4, retry=True)
            outcome = await wait_all_finished(api, names)
        assert worker.proc.poll() is None
    finally:
        await nc.drain()
        await worker.stop()
    assert outcome.statuses() == {"RUN_STATUS_COMPLETED": 4}


@pytest.mark.slow
async def test_a_postgres_restart_while_a_node_runs_does_not_run_the_node_again(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    """A pick-up checkpoints through one connection it holds; a PostgreSQL restart while a node
    runs closes it. The node's checkpoint goes through a new one: the run carries on in the
    same pick-up, each node executed once (a failed write would stop the pick-up and run the
    node again from the last checkpoint)."""
    postgres, settings = own_postgres.mesh("AMELIA_RUNS_NODE_RESTART", workers=0)
    record, release = tmp_path / "record", tmp_path / "release"
    steps = {"record": str(record), "release": str(release)}
    async with running_agents(settings) as agents, worker_pools(settings, pools=1, loops=1):
        api = agents.stub
        run = await create_run(api, workflow="workflows/test-steps", input=steps)
        await wait_node_b_started(record, timeout=30)
        await asyncio.to_thread(postgres.stop)
        await asyncio.to_thread(postgres.start)
        release.touch()
        done = await wait_status(api, run.name, S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED)
    assert done.status == S.RUN_STATUS_COMPLETED, done.error
    assert [line.split()[0] for line in record.read_text().splitlines()] == ["a", "b", "c"]
    assert done.attempt == 1


@pytest.mark.slow
async def test_a_frozen_postgres_fails_new_calls_unavailable_and_loses_no_run(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    """While PostgreSQL is frozen a call that needs a new connection fails UNAVAILABLE naming
    PostgreSQL after the connect timeout; one already on a connection waits for its deadline
    (nothing we can tell from a slow statement). The run in a node and the run queued wait for
    it, and finish once, each node executed once, when it thaws.

    One pooled connection kept per pool (DATABASE_POOL_SIZE=1), so a few calls use up the idle
    one; the calls' deadline (30 s) is far above the connect timeout (2 s)."""
    postgres, settings = own_postgres.mesh(
        "AMELIA_RUNS_FROZEN", workers=0, DATABASE_POOL_SIZE=1, **FROZEN_TIMEOUTS
    )
    record, release = tmp_path / "record", tmp_path / "release"
    steps = {"record": str(record), "release": str(release)}
    after = await last_sequence(settings)
    async with running_agents(settings) as agents, worker_pools(settings, pools=1, loops=1):
        api = agents.stub
        held = await create_run(api, workflow="workflows/test-steps", input=steps)
        await wait_status(api, held.name, S.RUN_STATUS_RUNNING)
        queued = await create_run(api, workflow="workflows/echo", input={"message": "queued"})
        await wait_node_b_started(record, timeout=30)
        outcomes: list[tuple[str, str]] = []
        with frozen(postgres):
            release.touch()  # node b ends: its writes wait on the frozen connection
            for _ in range(4):
                error = await rpc_error(api.GetRun(S.GetRunRequest(name=held.name), timeout=30))
                outcomes.append((error.code().name, error.details() or ""))
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    break
            refused = S.Run(workflow="workflows/echo")
            refused.input.update({"message": "while frozen"})
            created = await rpc_error(api.CreateRun(S.CreateRunRequest(run=refused), timeout=30))
            outcomes.append((created.code().name, created.details() or ""))
        done = [
            await wait_status(api, name, *FINISHED, timeout=90) for name in (held.name, queued.name)
        ]
        later = await create_run(api, workflow="workflows/echo", input={"message": "after"})
        done.append(await wait_status(api, later.name, *FINISHED, timeout=60))
        runs = [run.name for run in done]
        ends = await terminal_events(settings, after=after, runs=runs)
    # A call that needs a connection gives up after 2 s either way: its new connection's
    # connect timed out, or — when the process's own loops (webhooks, crons, metrics) hold
    # every pooled connection waiting on the frozen server — its checkout did.
    unavailable = re.compile(
        r"PostgreSQL is unavailable: (no answer in time \(TimeoutError\)|no pooled connection"
        r" came free in 2 s \(all \d+ in use; DATABASE_POOL_TIMEOUT_SECONDS\)); try again shortly"
    )
    # Calls before the last GetRun took the pooled connection that froze mid-statement.
    assert {code for code, _ in outcomes[:-2]} <= {"DEADLINE_EXCEEDED"}, outcomes
    assert [code for code, _ in outcomes[-2:]] == ["UNAVAILABLE"] * 2, outcomes
    assert all(unavailable.fullmatch(said) for _, said in outcomes[-2:]), outcomes
    assert [(S.RunStatus.Name(run.status), run.error) for run in done] == [
        ("RUN_STATUS_COMPLETED", "")
    ] * 3
    assert [line.split()[0] for line in record.read_text().splitlines()] == ["a", "b", "c"]
    assert {name: ends[name] for name in runs} == {name: 1 for name in runs}


@pytest.mark.slow
async def test_a_run_out_of_time_while_postgres_is_frozen_is_not_failed_for_it(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    """A run's node ends while PostgreSQL is frozen: its writes wait, and its time runs out
    waiting for them. That is the outage's, not the run's (QA s20: FAILED "took longer than
    60s; give a run more time"): the pick-up gives the run back, and once PostgreSQL answers
    the next one finishes it — COMPLETED, one end event."""
    postgres, settings = own_postgres.mesh(
        "AMELIA_RUNS_TIMEOUT_FROZEN", workers=0, **FROZEN_TIMEOUTS, RUN_RETRY_BACKOFF_SECONDS=1
    )
    record, release = tmp_path / "record", tmp_path / "release"
    steps = {"record": str(record), "release": str(release)}
    after = await last_sequence(settings)
    async with running_agents(settings) as agents, worker_pools(settings, pools=1, loops=1):
        api = agents.stub
        held = await create_run(api, workflow="workflows/test-steps", input=steps, timeout=8)
        await wait_node_b_started(record, timeout=30)
        with frozen(postgres):
            release.touch()  # node b ends: its writes wait on the frozen server
            await asyncio.sleep(12)  # past the run's 8 s, and the check of PostgreSQL after it
        done = await wait_status(api, held.name, *FINISHED, timeout=120)
        ends = await terminal_events(settings, after=after, runs=[held.name])
    assert (S.RunStatus.Name(done.status), done.error) == ("RUN_STATUS_COMPLETED", "")
    assert list(done.output["done"])[-1] == "c"
    assert ends == {held.name: 1}
