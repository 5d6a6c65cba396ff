"""One executor per thread, where runs execute: a run CANCELLED at once while its worker is still
stopping it (its node slow to unwind) keeps the thread's next run from starting until that
worker has really stopped — or died (SIGKILL) — and duplicate jobs of both runs racing on two
workers change nothing. Real `python -m amelia_agents.worker` processes on a queue of their
own; the slow node blocks its worker's process until the test lets it go (`test-stubborn`)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from agents_helpers import S, Stub, WorkerProcess, create_run, wait_status
from faults_helpers import agents_without_workers, run_uuid, terminal_events, worker_env

from amelia_agents import queue
from amelia_agents.locks import run_lock_key
from amelia_common.db import libpq_url
from amelia_common.eventlog import EventLog, StartAt
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

HERE = Path(__file__).parent
QUEUE = "AMELIA_RUNS_THREAD_EXCLUSIVE"


@pytest.fixture
async def api(infra: object, events_address: str) -> AsyncIterator[Stub]:
    async with agents_without_workers(infra, events_address, QUEUE) as stub:
        yield stub


class Scene:
    """Two runs of one thread on `test-stubborn`, their marks in one record file."""

    def __init__(self, settings: Settings, tmp_path: Path, loops: int) -> None:
        self.settings = settings
        self.dir = tmp_path
        self.record = tmp_path / "record"
        (tmp_path / "r2.release").touch()  # the second run's node goes through at once
        self.env = {**worker_env(QUEUE), "AGENT_WORKERS": str(loops)}
        self.workers: list[WorkerProcess] = []

    async def start_worker(self) -> WorkerProcess:
        log = self.dir / f"worker{len(self.workers)}.log"
        worker = WorkerProcess(self.settings, log, env=self.env, pythonpath=[HERE])
        self.workers.append(worker)
        await worker.ready()
        return worker

    def request(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "record": str(self.record),
            "release": str(self.dir / f"{name}.release"),
            "unwind": str(self.dir / f"{name}.unwind"),
        }

    def marks(self) -> list[str]:
        """`<run> <what>` lines, in order."""
        if not self.record.exists():
            return []
        return [" ".join(line.split()[:2]) for line in self.record.read_text().splitlines()]

    def gap(self) -> float:
        """Seconds from the first run's node unwound to the second run's node starting."""
        at = {
            " ".join(f[:2]): float(f[3])
            for f in map(str.split, self.record.read_text().splitlines())
        }
        return at["r2 work"] - at["r1 unwound"]

    async def marked(self, mark: str, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while mark not in self.marks():  # noqa: ASYNC110 - another process writes it
                await asyncio.sleep(0.05)


@asynccontextmanager
async def staged(
    infra: object, tmp_path: Path, workers: int, loops: int = 1, **env: str
) -> AsyncIterator[tuple[Scene, asyncpg.Connection]]:
    """The scene with `workers` worker processes started (`env` added to theirs), and a
    connection to the database; on the way out the first run's node is let go and every
    worker stopped."""
    settings: Settings = infra.settings(RUNS_QUEUE_STREAM=QUEUE)  # type: ignore[attr-defined]
    scene = Scene(settings, tmp_path, loops)
    scene.env.update(env)
    db = await asyncpg.connect(libpq_url(settings.DATABASE_URL))
    try:
        for _ in range(workers):
            await scene.start_worker()
        yield scene, db
    finally:
        (tmp_path / "r1.unwind").touch()
        await db.close()
        for worker in scene.workers:
            await worker.stop()


async def lock_holder(db: asyncpg.Connection, run_name: str) -> int:
    """The backend holding the run's lock (its worker's lock connection)."""
    key = run_lock_key(run_uuid(run_name))
    async with asyncio.timeout(30):
        while True:
            pid = await db.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2",
                key >> 32,
                key & 0xFFFFFFFF,
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.05)


async def waited_on(db: asyncpg.Connection, pid: int, timeout: float = 60) -> None:
    """Once another backend waits for a lock `pid` holds (the next run's worker, waiting for
    the thread's lock)."""
    async with asyncio.timeout(timeout):
        while not await db.fetchval(  # noqa: ASYNC110 - PostgreSQL's state
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
        ):
            await asyncio.sleep(0.05)


async def run_events(settings: Settings, name: str) -> list[str]:
    """The types of the run's events in the log so far."""
    nc = await connect_nats(settings, "test-run-events")
    try:
        found = []
        async with EventLog(nc, settings, source="test").read(
            (), name, StartAt.after(0), follow=False
        ) as reader:
            async for event in reader:
                found.append(event.type)
        return found
    finally:
        await nc.drain()


async def checkpoints(db: asyncpg.Connection, thread: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT checkpoint_id, parent_checkpoint_id, metadata ->> 'amelia_run' AS run "
        "FROM checkpoints WHERE thread_id = $1 AND checkpoint_ns = '' ORDER BY checkpoint_id",
        thread.removeprefix("threads/"),
    )


async def written(db: asyncpg.Connection, thread: str) -> tuple[list[asyncpg.Record], int]:
    """The thread's checkpoints and how many checkpoint writes it has."""
    writes = await db.fetchval(
        "SELECT count(*) FROM checkpoint_writes WHERE thread_id = $1",
        thread.removeprefix("threads/"),
    )
    return await checkpoints(db, thread), int(writes)


def assert_one_chain(found: list[asyncpg.Record]) -> None:
    """Each checkpoint's parent is the one before it: one history, no fork."""
    assert found, "no checkpoints"
    assert found[0]["parent_checkpoint_id"] is None
    for before, after in itertools.pairwise(found):
        assert after["parent_checkpoint_id"] == before["checkpoint_id"], [dict(r) for r in found]


async def cancelled_then_next(api: Stub, scene: Scene) -> tuple[S.Run, S.Run, asyncio.Future[Any]]:
    """The first run stuck stopping after CancelRun, the second created at once on its thread;
    the CancelRun call (it waits a moment for the worker's answer) still going."""
    first = await create_run(api, workflow="workflows/test-stubborn", input=scene.request("r1"))
    await scene.marked("r1 work")
    cancel = asyncio.ensure_future(api.CancelRun(S.CancelRunRequest(name=first.name)))
    await wait_status(api, first.name, S.RUN_STATUS_CANCELLED)
    second = await create_run(
        api, workflow="workflows/test-stubborn", thread=first.thread, input=scene.request("r2")
    )
    await scene.marked("r1 cancelled")  # its worker is stopping it (slowly)
    return first, second, cancel


async def assert_waits(
    api: Stub, settings: Settings, db: asyncpg.Connection, first: S.Run, second: S.Run
) -> None:
    """The second run has not started, and says what it waits for."""
    run = (await api.GetRun(S.GetRunRequest(name=second.name))).run
    assert run.status == S.RUN_STATUS_QUEUED and not run.HasField("start_time"), run
    assert run.queued_behind == first.name
    assert not any(
        r["run"] == str(run_uuid(second.name)) for r in await checkpoints(db, first.thread)
    )
    assert await run_events(settings, second.name) == []


async def assert_ran_once_after(
    api: Stub, db: asyncpg.Connection, scene: Scene, first: S.Run, second: S.Run
) -> S.Run:
    done = await wait_status(api, second.name, S.RUN_STATUS_COMPLETED, timeout=90)
    assert done.output["result"] == "released then" and done.attempt == 1
    marks = scene.marks()
    assert [m for m in marks if m.startswith("r2 ")] == ["r2 work", "r2 then"], marks
    assert marks.count("r1 work") == 1 and "r1 then" not in marks, marks
    assert_one_chain(await checkpoints(db, first.thread))
    ends = await terminal_events(scene.settings, 0, [first.name, second.name])
    assert ends[first.name] == ends[second.name] == 1
    ended = (await api.GetRun(S.GetRunRequest(name=first.name))).run
    assert ended.status == S.RUN_STATUS_CANCELLED
    return done


async def test_the_next_run_starts_once_the_cancelled_runs_worker_has_stopped(
    api: Stub, infra: object, tmp_path: Path
) -> None:
    async with staged(infra, tmp_path, workers=2) as (scene, db):
        first, second, cancel = await cancelled_then_next(api, scene)
        await waited_on(db, await lock_holder(db, first.name))
        await assert_waits(api, scene.settings, db, first, second)

        (tmp_path / "r1.unwind").touch()
        await assert_ran_once_after(api, db, scene, first, second)
        marks = scene.marks()
        assert marks.index("r1 unwound") < marks.index("r2 work"), marks
        print(
            f"from the first run's node unwound to the second's node: {scene.gap() * 1000:.0f} ms"
        )
        await cancel


async def test_the_next_run_starts_once_the_stopping_worker_is_killed(
    api: Stub, infra: object, tmp_path: Path
) -> None:
    async with staged(infra, tmp_path, workers=1) as (scene, db):
        first, second, cancel = await cancelled_then_next(api, scene)
        holder = await lock_holder(db, first.name)
        await scene.start_worker()  # (the first is stuck: the second run goes to this one)
        await waited_on(db, holder)
        await assert_waits(api, scene.settings, db, first, second)

        scene.workers[0].kill()  # its connections die, with the run's and the thread's locks
        await assert_ran_once_after(api, db, scene, first, second)
        assert "r1 unwound" not in scene.marks()
        await cancel


async def test_a_silent_thread_holder_is_taken_over_and_writes_nothing_after(
    api: Stub, infra: object, tmp_path: Path
) -> None:
    """The stuck worker stops heartbeating (its node blocks its process): the next run's worker
    takes the thread over once it has been silent for the heartbeat timeout (3 s here, for both
    workers: a holder's lease is half its own); let go afterwards, the stuck worker writes
    nothing more for the thread."""
    async with staged(infra, tmp_path, workers=1, RUN_HEARTBEAT_TIMEOUT_SECONDS="3") as (
        scene,
        db,
    ):
        first, second, cancel = await cancelled_then_next(api, scene)
        # The first run's job gone (a redelivery would take the whole stuck worker over): the
        # next run's worker meets the thread's silent holder itself.
        nc = await connect_nats(scene.settings, "test-drop-job")
        try:
            js = nc.jetstream()
            job = await js.get_last_msg(
                QUEUE, queue.job_subject(scene.settings, run_uuid(first.name))
            )
            await js.delete_msg(QUEUE, job.seq)
        finally:
            await nc.drain()
        other = await scene.start_worker()
        await assert_ran_once_after(api, db, scene, first, second)
        assert "took a thread over from a holder that stopped heartbeating" in other.log_text()
        assert "r1 unwound" not in scene.marks()
        before = await written(db, first.thread)

        (tmp_path / "r1.unwind").touch()
        await scene.marked("r1 unwound")
        stuck = scene.workers[0]

        async def over() -> bool:
            return any(said in stuck.log_text() for said in ("run left", "lost the run"))

        await stuck.wait_until(over, "the stuck pick-up over", 30)
        assert await written(db, first.thread) == before
        assert scene.marks().count("r2 work") == 1
        await cancel


async def test_duplicate_jobs_of_both_runs_racing_on_two_workers(
    api: Stub, infra: object, tmp_path: Path
) -> None:
    async with staged(infra, tmp_path, workers=2, loops=2) as (scene, db):
        first, second, cancel = await cancelled_then_next(api, scene)
        # A second job of each run, as a redelivery or the reconciler could leave: the second
        # run's names no thread (an earlier version's job), so its thread is read from its row.
        nc = await connect_nats(scene.settings, "test-duplicates")
        try:
            js, settings = nc.jetstream(), scene.settings
            thread = uuid.UUID(first.thread.removeprefix("threads/"))
            await queue.enqueue(js, settings, run_uuid(second.name), f"dup-{uuid.uuid4().hex}")
            await queue.enqueue(
                js, settings, run_uuid(first.name), f"dup-{uuid.uuid4().hex}", thread
            )
        finally:
            await nc.drain()
        await waited_on(db, await lock_holder(db, first.name))
        await assert_waits(api, scene.settings, db, first, second)

        (tmp_path / "r1.unwind").touch()
        await assert_ran_once_after(api, db, scene, first, second)
        await cancel
