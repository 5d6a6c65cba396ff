"""A worker's first look at a job takes the run's lock, its thread's, and claims the run in one
statement (session 18: `runs_lock_and_claim`, migration agents_0009) — and keeps the claim's
rules: the claim sees a run whose CreateRun committed while the statement waited for it; it
claims as `Store.claim` claims (never a run queued behind its thread's run, nor a paused or
ended one); a run whose thread is another executor's, or whose lock is another's, is not
claimed; a recording wait that times out takes the lock without the claim; two workers given
the same job claim it once; a lock statement cut off (its backend terminated) holds nothing
and claimed nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from test_agents_run_path import queued_run, recording, recording_waiters
from test_agents_run_path import store as store  # the fixture

from amelia_agents.locks import RunLock
from amelia_agents.models import RunRow, RunState
from amelia_agents.runstate import after_claim
from amelia_agents.store import RECORDING_LOCK_SPACE, Store
from amelia_common.settings import Settings


def worker_lock(store: Store, row: RunRow, thread_known: bool = True) -> RunLock:
    """A worker's lock of `row`'s run (and thread: from the job, or from the run's row)."""
    lock = store.run_lock(row.id)
    lock.exclusive_thread(row.thread_id if thread_known else None)
    return lock


async def recorded(store: Store, settings: Settings, **values: Any) -> RunRow:
    """A run recorded (committed) on a new thread, then given `values` as they are."""
    row = queued_run(settings)
    await store.create_run(row, True)
    if values:
        sets = ", ".join(f"{name} = :{name}" for name in values)
        async with store.engine.begin() as conn:
            await conn.execute(
                text(f"UPDATE runs SET {sets} WHERE id = :id"), {"id": row.id, **values}
            )
    return row


async def lock_and_claim(lock: RunLock, worker: str = "w") -> tuple[RunRow | None, bool] | None:
    """The lock's first look (as a worker's), and the claim it made (None: none)."""
    assert await lock.acquire(recorded_within=60, claim_as=worker)
    found = lock.take_claim()
    assert lock.take_claim() is None  # taken once
    return Store.claimed_by_lock(found) if found is not None else None


async def thread_free(store: Store, thread_id: uuid.UUID) -> bool:
    """Whether another run's executor would get the thread's lock now."""
    other = store.run_lock(uuid.uuid4())
    other.exclusive_thread(thread_id)
    try:
        assert await other.acquire()
        return other.thread_held
    finally:
        await other.release()


async def unclaimed(store: Store, run_id: uuid.UUID) -> bool:
    """Whether the run is QUEUED and was never claimed."""
    stored = await store.get_run(run_id)
    assert stored is not None
    return (stored.status, stored.attempt, stored.pickups) == (RunState.QUEUED.value, 0, 0)


@pytest.mark.parametrize("thread_known", [True, False], ids=["job-names-thread", "thread-from-row"])
async def test_the_claim_in_the_lock_sees_the_run_recorded_while_it_waited(
    store: Store, agents_settings: Settings, thread_known: bool
) -> None:
    async with recording(store, agents_settings) as (row, commit):
        lock = worker_lock(store, row, thread_known)
        locking = asyncio.create_task(lock_and_claim(lock, "worker-1"))
        try:
            assert await recording_waiters(store) == 1
            assert not locking.done()
            commit.set()
            claim = await locking
            assert claim is not None
            claimed, won = claim
            assert won and claimed is not None
            assert (claimed.status, claimed.attempt, claimed.pickups, claimed.worker) == (
                RunState.RUNNING.value,
                1,
                1,
                "worker-1",
            )
            assert claimed.start_time is not None and claimed.thread_id == row.thread_id
            assert lock.thread_held and not lock.thread_busy
            # Its thread's lock is this holder's: no other executor gets it.
            assert not await thread_free(store, row.thread_id)
            stored = await store.get_run(row.id)
            assert stored is not None and stored.attempt == 1 and stored.worker == "worker-1"
        finally:
            await asyncio.gather(locking, return_exceptions=True)
            await lock.release()


# (status, attempt, queued_behind) before the claim
STATES = {
    "queued": (RunState.QUEUED.value, 0, False),
    "running, its worker gone": (RunState.RUNNING.value, 1, False),
    "queued behind its thread's run": (RunState.QUEUED.value, 0, True),
    "paused": (RunState.PAUSED.value, 1, False),
    "completed": (RunState.COMPLETED.value, 1, False),
    "cancelled": (RunState.CANCELLED.value, 0, False),
}


@pytest.mark.parametrize("state", list(STATES))
async def test_the_lock_claims_as_the_store_claims(
    store: Store, agents_settings: Settings, state: str
) -> None:
    status, attempt, behind = STATES[state]
    values: dict[str, Any] = {"status": status, "attempt": attempt, "pickups": attempt}
    if behind:
        values["queued_behind"] = uuid.uuid4()
    by_store = await recorded(store, agents_settings, **values)
    by_lock = await recorded(store, agents_settings, **values)
    stored_row, stored_won = await store.claim(by_store.id, "w")
    lock = worker_lock(store, by_lock)
    try:
        claim = await lock_and_claim(lock)
    finally:
        await lock.release()
    assert claim is not None
    locked_row, locked_won = claim
    assert stored_row is not None and locked_row is not None
    assert locked_won == stored_won == (state in ("queued", "running, its worker gone"))

    def seen(row: RunRow) -> tuple[Any, ...]:
        return (row.status, row.attempt, row.pickups, row.worker, row.start_time is None)

    assert seen(locked_row) == seen(stored_row)
    assert after_claim(locked_row, locked_won, 0.0) is after_claim(stored_row, stored_won, 0.0)
    assert seen(await store.get_run(by_lock.id)) == seen(locked_row)  # type: ignore[arg-type]


async def test_a_run_never_recorded_is_not_claimed(store: Store, agents_settings: Settings) -> None:
    row = queued_run(agents_settings)  # (never recorded)
    for thread_known in (True, False):
        lock = worker_lock(store, row, thread_known)
        try:
            assert await lock_and_claim(lock) in (None, (None, False))
        finally:
            await lock.release()
    assert await store.claim(row.id, "w") == (None, False)


async def test_a_run_whose_thread_another_executor_holds_is_not_claimed(
    store: Store, agents_settings: Settings
) -> None:
    row = await recorded(store, agents_settings)
    stopping = store.run_lock(uuid.uuid4())  # a run of the thread, its executor stopping
    stopping.exclusive_thread(row.thread_id)
    lock = worker_lock(store, row)
    try:
        assert await stopping.acquire() and stopping.thread_held
        assert await lock_and_claim(lock) is None
        assert lock.held and lock.thread_busy and not lock.thread_held
        assert await unclaimed(store, row.id)
        # Once the thread is free, the wait takes it and the claim (pooled) is the first.
        await stopping.release()
        assert await lock.wait_thread(5)
        claimed, won = await store.claim(row.id, "w")
        assert won and claimed is not None and claimed.attempt == 1
    finally:
        await stopping.release()
        await lock.release()


async def test_a_run_whose_lock_another_holds_is_neither_claimed_nor_its_thread_taken(
    store: Store, agents_settings: Settings
) -> None:
    row = await recorded(store, agents_settings)
    holder, lock = store.run_lock(row.id), worker_lock(store, row)
    try:
        assert await holder.acquire()
        assert await lock.acquire(recorded_within=60, claim_as="w") is False
        assert lock.take_claim() is None and not lock.held and not lock.thread_held
        assert await unclaimed(store, row.id)
        # The thread was not taken (nor left locked on a pooled connection).
        assert await thread_free(store, row.thread_id)
    finally:
        await holder.release()
        await lock.release()


async def test_a_recording_wait_that_times_out_takes_the_lock_without_the_claim(
    store: Store, agents_settings: Settings
) -> None:
    async with recording(store, agents_settings) as (row, commit):
        lock = worker_lock(store, row)
        try:
            assert await lock.acquire(recorded_within=0.2, claim_as="w") is True
            assert lock.held and lock.take_claim() is None
            commit.set()
            assert await store.wait_until_recorded(row.id, 60)
            assert await unclaimed(store, row.id)
        finally:
            await lock.release()


async def test_two_workers_given_the_same_job_claim_it_once(
    store: Store, agents_settings: Settings
) -> None:
    async with recording(store, agents_settings) as (row, commit):
        locks = [worker_lock(store, row) for _ in range(2)]
        tries = [
            asyncio.create_task(lock.acquire(recorded_within=60, claim_as=f"w{i}"))
            for i, lock in enumerate(locks)
        ]
        try:
            await asyncio.sleep(0.2)
            commit.set()
            taken = await asyncio.gather(*tries)
            assert sorted(taken) == [False, True]
            winner = locks[taken.index(True)]
            found = winner.take_claim()
            assert found is not None
            claimed, won = Store.claimed_by_lock(found)
            assert won and claimed is not None and claimed.attempt == 1 and claimed.pickups == 1
            assert claimed.worker == f"w{taken.index(True)}"
        finally:
            await asyncio.gather(*tries, return_exceptions=True)
            for lock in locks:
                await lock.release()


async def test_a_lock_statement_cut_off_while_it_waits_holds_nothing_and_claimed_nothing(
    store: Store, agents_settings: Settings
) -> None:
    async with recording(store, agents_settings) as (row, commit):
        lock = worker_lock(store, row)
        locking = asyncio.create_task(lock.acquire(recorded_within=60, claim_as="cut"))
        try:
            assert await recording_waiters(store) == 1
            async with store.engine.begin() as conn:
                cut = await conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                        "WHERE locktype = 'advisory' AND NOT granted AND classid = :space"
                    ),
                    {"space": RECORDING_LOCK_SPACE},
                )
            assert cut == 1
            with pytest.raises(Exception):  # noqa: B017 - the backend's end, as the driver says it
                await locking
            assert not lock.held and lock.take_claim() is None
            commit.set()
            assert await store.wait_until_recorded(row.id, 60)
            # Nothing of the cut statement is left: the next worker takes both locks and
            # claims the run as its first pick-up.
            other = worker_lock(store, row)
            try:
                claim = await lock_and_claim(other, "next")
                assert claim is not None
                claimed, won = claim
                assert won and claimed is not None
                assert (claimed.attempt, claimed.worker) == (1, "next")
            finally:
                await other.release()
        finally:
            await asyncio.gather(locking, return_exceptions=True)
            await lock.release()
