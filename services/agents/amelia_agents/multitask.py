"""Multitask strategies: a new run on a thread that already has one (LangGraph Server's
`multitask_strategy`, its "double texting"), and the runs of a thread starting one at a time.

- `reject` (the default): FAILED_PRECONDITION, as before.
- `enqueue`: the run is recorded QUEUED behind the thread's admitted active run (its
  `queued_behind`), with no job. When that run ends, the thread's first waiting run (oldest
  first) is admitted: `queued_behind` cleared, its job queued; the others now wait behind it.
- `interrupt`: the same, and in the transaction that records it every other active run of the
  thread is CANCELLED with the reason `interrupted by runs/<new>` (their checkpoints stay: the
  new run continues the thread from them). A run being executed is stopped by its worker (the
  cancel request, or its status check within a second); the new run is admitted once it has.
- `rollback`: as interrupt, and the stopped runs are deleted with their checkpoints once their
  executor stopped (the thread's state goes back to before them), before the new run starts.

**One run of a thread executes at a time.** The unique index `uq_runs_active_thread` allows one
admitted (`queued_behind IS NULL`) queued, running or paused run per thread, and a waiting run is
never claimed. A run is admitted only by `settle`, which holds the run lock of the thread's
latest started run (the only one whose executor may still be running) — or is that run's worker,
at its end — so a cancelled run still unwinding keeps the next one waiting. A default (reject)
CreateRun right after a CancelRun is admitted by the index alone, though: where runs execute,
the worker's run lock also takes the thread's (`locks`), so that run starts only once the
cancelled run's executor has let the thread go; meanwhile GetRun names the run it waits for
(`run_and_stopping`).

`settle` runs at every end that leaves the thread runs to admit or delete (`RunEvents.terminal`),
after CreateRun recorded a waiting run (its own end may have been read before the commit), and
in the reconciler for threads whose admitting end was lost (a worker killed between the run's
end and the next's admission). Whoever admits queues the job after the commit; a job lost then
is the reconciler's, as for any run.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

from nats.js import JetStreamContext
from sqlalchemy import text

from amelia_agents import pgdriver, queue
from amelia_agents.locks import RunLock, held_lock
from amelia_agents.models import ACTIVE_STATES, RunRow
from amelia_agents.store import Store
from amelia_common.errors import InvalidArgumentError
from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.agents.multitask")

REJECT, ENQUEUE, INTERRUPT, ROLLBACK = "reject", "enqueue", "interrupt", "rollback"
STRATEGIES = (REJECT, ENQUEUE, INTERRUPT, ROLLBACK)
# A run's lock still held by a worker at the end it is finishing: looked at again this often.
LOCK_RETRY_DELAYS = (0.0, 0.05, 0.15, 0.3, 0.5)
_ACTIVE = {state.value for state in ACTIVE_STATES}


def strategy(value: str) -> str:
    """The strategy CreateRun was given (`run.multitask_strategy`, empty: reject)."""
    found = value.strip().lower() or REJECT
    if found not in STRATEGIES:
        raise InvalidArgumentError(
            f"run.multitask_strategy {value!r} is not one of: {', '.join(STRATEGIES)}"
        )
    return found


def stop_reason(chosen: str, run_id: uuid.UUID) -> str | None:
    """The reason the thread's runs are cancelled with for a run created with `chosen`."""
    if chosen == INTERRUPT:
        return f"interrupted by runs/{run_id} (multitask_strategy interrupt)"
    if chosen == ROLLBACK:
        return f"rolled back by runs/{run_id} (multitask_strategy rollback)"
    return None


async def settle(
    store: Store, js: JetStreamContext, settings: Settings, thread_id: uuid.UUID
) -> uuid.UUID | None:
    """Delete the thread's rolled back runs and admit its next waiting run, once the thread's
    latest started run has ended and its executor is gone; the run admitted (its job queued),
    or None. Safe to call from anywhere at any time: nothing is done while the thread's run
    is active, or while another process holds that run's lock (its holder settles)."""
    turn = await store.thread_turn(thread_id)
    if turn.busy or turn.last_status in _ACTIVE:
        return None  # the active run's end settles the thread
    lock = None
    held = held_lock()
    if turn.last_started is not None and (held is None or held.run_id != turn.last_started):
        lock = RunLock(store.engine, turn.last_started)
        if not await _take(lock):
            return None  # its worker is finishing it: its end settles the thread
    try:
        gone = await store.rolled_back(thread_id)
        if gone:
            await delete_checkpoints(store, thread_id, gone)
            await store.delete_runs(gone)
            log.info("rolled back runs deleted", thread=str(thread_id), runs=[str(r) for r in gone])
        admitted = await store.admit_next(thread_id, settings.RUNS_QUEUE_STREAM)
    finally:
        if lock is not None:
            await lock.release()
    if admitted is not None:
        key = f"admitted-{uuid.uuid4().hex[:12]}"
        await queue.enqueue(js, settings, admitted, key, thread_id)
        log.info("run admitted on its thread", run=str(admitted), thread=str(thread_id))
    return admitted


async def _take(lock: RunLock) -> bool:
    """The lock of a run that has ended: its worker may be a moment from releasing it."""
    for delay in LOCK_RETRY_DELAYS:
        await asyncio.sleep(delay)
        if await lock.acquire():
            return True
    return False


@contextlib.asynccontextmanager
async def ended_run_lock(store: Store, run_id: uuid.UUID) -> AsyncIterator[bool]:
    """Hold an ended run's lock while the body runs (DeleteRun): True once taken (no worker is
    stopping the run any more), False when its worker still held it after a moment."""
    lock = RunLock(store.engine, run_id)
    taken = await _take(lock)
    try:
        yield taken
    finally:
        if taken:
            await lock.release()


async def settle_quietly(
    store: Store, js: JetStreamContext, settings: Settings, thread_id: uuid.UUID
) -> None:
    """`settle`, its failure logged: the reconciler settles the thread later."""
    try:
        await settle(store, js, settings, thread_id)
    except Exception as exc:  # noqa: BLE001 - an outage: the reconciler looks again
        log.warning(
            "could not admit the thread's next run; the reconciler will",
            thread=str(thread_id),
            error=str(exc) or repr(exc),
        )


# A run's two 32-bit halves of its advisory-lock key (`locks.run_lock_key`: the UUID's first 8
# bytes, 63 bits), as pg_locks shows them (classid, objid), from a uuid column `{id}`.
_HIGH = "(('x' || left(replace({id}::text, '-', ''), 8))::bit(32)::bigint & 2147483647)"
_LOW = "('x' || substr(replace({id}::text, '-', ''), 9, 8))::bit(32)::bigint"
# A run read with, for an admitted QUEUED run only, the run of its thread whose executor holds
# the thread's lock (`locks`: its backend holds the thread's key and that run's, each a one-key
# advisory lock), other than itself: one statement, pg_locks read only when it can matter.
_RUN_AND_STOPPING = f"""
    SELECT {", ".join(f"r.{column.name}" for column in RunRow.__table__.c)}, CASE WHEN r.status = 'QUEUED' AND r.queued_behind IS NULL THEN (
        SELECT o.id FROM pg_locks t
        JOIN pg_locks l ON l.pid = t.pid AND l.locktype = 'advisory' AND l.granted
            AND l.objsubid = 1 AND l.database = t.database
        JOIN runs o ON o.thread_id = r.thread_id AND o.id <> r.id
            AND l.classid::bigint = {_HIGH.format(id="o.id")}
            AND l.objid::bigint = {_LOW.format(id="o.id")}
        WHERE t.locktype = 'advisory' AND t.granted AND t.objsubid = 1
            AND t.classid::bigint = {_HIGH.format(id="r.thread_id")}
            AND t.objid::bigint = {_LOW.format(id="r.thread_id")}
            AND t.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        LIMIT 1) END AS stopping_run
    FROM runs r WHERE r.id = $1
"""


async def run_and_stopping(
    store: Store, run_id: uuid.UUID
) -> tuple[RunRow | None, uuid.UUID | None]:
    """The run (None if unknown) and, while it is QUEUED for a worker, the run of its thread
    still being executed — ended, its worker stopping it — that it waits for before a worker
    can start it (`locks`: one executor per thread); None when no other run's executor holds
    the thread. For GetRun's `queued_behind`, in one statement."""
    async with pgdriver.connection(store.engine) as pg:
        found = await pg.fetchrow(_RUN_AND_STOPPING, run_id)
    if found is None:
        return None, None
    values = dict(found)
    stopping = values.pop("stopping_run")
    return RunRow(**values), stopping


# A rolled back run's checkpoints (those whose metadata names it, see `steps`) and their
# writes; then the blobs only they used (LangGraph's tables, `langgraph-checkpoint-postgres`).
_DELETE_CHECKPOINTS = text(
    """
    WITH gone AS (
        DELETE FROM checkpoints
        WHERE thread_id = :thread AND metadata ->> 'amelia_run' = ANY(:runs)
        RETURNING checkpoint_ns, checkpoint_id, checkpoint -> 'channel_versions' AS versions
    ), writes AS (
        DELETE FROM checkpoint_writes w USING gone
        WHERE w.thread_id = :thread AND w.checkpoint_ns = gone.checkpoint_ns
        AND w.checkpoint_id = gone.checkpoint_id
    )
    SELECT DISTINCT gone.checkpoint_ns, v.key AS channel, v.value AS version
    FROM gone CROSS JOIN LATERAL jsonb_each_text(gone.versions) AS v
    """
)
_DELETE_UNUSED_BLOBS = text(
    """
    DELETE FROM checkpoint_blobs b
    USING unnest(CAST(:ns AS text[]), CAST(:channels AS text[]), CAST(:versions AS text[]))
        AS freed(ns, channel, version)
    WHERE b.thread_id = :thread AND b.checkpoint_ns = freed.ns
    AND b.channel = freed.channel AND b.version = freed.version
    AND NOT EXISTS (
        SELECT 1 FROM checkpoints c
        WHERE c.thread_id = :thread AND c.checkpoint_ns = freed.ns
        AND c.checkpoint -> 'channel_versions' ->> freed.channel = freed.version
    )
    """
)


async def delete_checkpoints(
    store: Store, thread_id: uuid.UUID, run_ids: Sequence[uuid.UUID]
) -> None:
    """Delete what `run_ids` wrote in the thread's checkpoint history, in one transaction."""
    params = {"thread": str(thread_id), "runs": [str(r) for r in run_ids]}
    async with store.engine.begin() as conn:
        freed = (await conn.execute(_DELETE_CHECKPOINTS, params)).all()
        if freed:
            await conn.execute(
                _DELETE_UNUSED_BLOBS,
                {
                    "thread": str(thread_id),
                    "ns": [f.checkpoint_ns for f in freed],
                    "channels": [f.channel for f in freed],
                    "versions": [f.version for f in freed],
                },
            )
