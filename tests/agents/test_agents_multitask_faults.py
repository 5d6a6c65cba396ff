"""Multitask enqueue across a worker's death: a worker SIGKILLed between recording a run's end
and admitting the thread's next run (it is held there: the test keeps the next run's row locked
until the kill) — the reconciler admits it; its job is then lost (the queue purged) — the
reconciler queues it again, and another worker runs it, once. Real `python -m amelia_agents.worker`
processes on a queue of their own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from agents_helpers import S, Stub, WorkerProcess, create_run, wait_status
from faults_helpers import (
    agents_without_workers,
    jobs_per_run,
    purge_queue,
    run_uuid,
    terminal_events,
    worker_env,
)

from amelia_common.db import libpq_url
from amelia_common.settings import Settings

HERE = Path(__file__).parent
QUEUE = "AMELIA_RUNS_MULTITASK_FAULTS"
ENV = {**worker_env(QUEUE), "RUN_SWEEP_INTERVAL_SECONDS": "1", "RUN_REQUEUE_AFTER_SECONDS": "1"}


@pytest.fixture
async def api(infra: object, events_address: str) -> AsyncIterator[Stub]:
    """An agents service with no workers of its own, its reconciler looking every second."""
    async with agents_without_workers(
        infra, events_address, QUEUE, RUN_SWEEP_INTERVAL_SECONDS=1, RUN_REQUEUE_AFTER_SECONDS=1
    ) as stub:
        yield stub


async def wait_blocked_by(db: asyncpg.Connection, timeout: float = 60) -> None:
    """Once another backend waits for a lock `db` holds. `db` is inside its transaction, where
    PostgreSQL keeps the first look at pg_stat_activity until the transaction ends: a backend
    that connected later (the worker's pool opening a connection for the admission) would never
    be seen, so that look is cleared before each poll."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await db.execute("SELECT pg_stat_clear_snapshot()")
        if await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            db.get_server_pid(),
        ):
            return
        assert asyncio.get_running_loop().time() < deadline, "the next run was never admitted"
        await asyncio.sleep(0.05)


async def test_a_worker_killed_between_a_runs_end_and_the_next_ones_start(
    api: Stub, infra: object, tmp_path: Path
) -> None:
    settings: Settings = infra.settings()  # type: ignore[attr-defined]
    first_worker = WorkerProcess(settings, tmp_path / "worker1.log", env=ENV, pythonpath=[HERE])
    second_worker: WorkerProcess | None = None
    db = await asyncpg.connect(libpq_url(settings.DATABASE_URL))
    try:
        await first_worker.ready()
        release = tmp_path / "release"
        first = await create_run(
            api,
            workflow="workflows/test-steps",
            input={"record": str(tmp_path / "record"), "release": str(release)},
        )
        second = await create_run(
            api,
            workflow="workflows/test-steps",
            thread=first.thread,
            input={"record": str(tmp_path / "record2"), "release": str(release)},
            multitask_strategy="enqueue",
        )
        assert second.queued_behind == first.name
        # The next run's row stays locked: the first run's end stops in its admission.
        holding = db.transaction()
        await holding.start()
        await db.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run_uuid(second.name))
        release.touch()
        await wait_blocked_by(db)  # the worker admitting the next run (the only one)
        first_worker.kill()
        await holding.rollback()
        # The reconciler admits the next run and queues its job; NATS then loses the job.
        queue_settings = infra.settings(RUNS_QUEUE_STREAM=QUEUE)  # type: ignore[attr-defined]
        async with asyncio.timeout(60):
            while True:
                if run_uuid(second.name) in await jobs_per_run(queue_settings):
                    break
                await asyncio.sleep(0.1)
        assert (await api.GetRun(S.GetRunRequest(name=second.name))).run.queued_behind == ""
        await purge_queue(queue_settings)
        second_worker = WorkerProcess(
            settings, tmp_path / "worker2.log", env=ENV, pythonpath=[HERE]
        )
        await second_worker.ready()

        done = await wait_status(api, second.name, S.RUN_STATUS_COMPLETED, timeout=90)
        ended = await wait_status(api, first.name, S.RUN_STATUS_COMPLETED)
        assert done.start_time.ToDatetime() >= ended.end_time.ToDatetime()
        # It ran once, from the thread state the first left (the nodes append to `done`).
        assert done.output["done"] == ["a", "b", "c"] * 2 and done.attempt == 1
        ends = await terminal_events(settings, 0, [first.name, second.name])
        assert ends[first.name] == ends[second.name] == 1
    finally:
        await db.close()
        first_worker.kill() if first_worker.proc.poll() is None else None
        await first_worker.stop()
        if second_worker is not None:
            await second_worker.stop()
