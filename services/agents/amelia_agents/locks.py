"""One executor per run: the run's PostgreSQL advisory lock, on a connection of its own.

A worker holds the lock while it executes a run, so a job JetStream delivers twice (or a second
job for the same run) never runs it twice at once; the reconciler takes it for an instant to
know that no worker has the run. A session-level lock dies with its connection: a SIGKILLed
worker's lock is gone at once — and so is a live worker's when PostgreSQL restarts. `check()`
notices that and takes the lock again, or reports that another worker has the run by then.

The lock's connection is in autocommit: taking, checking and releasing are one statement each
(no BEGIN/COMMIT around them), and no transaction stays open while the run executes. They go to
the driver (asyncpg) directly, on a connection of the engine's pool: SQLAlchemy's compile, cache
key and result processing cost several times the statement's own CPU, twice per run.

A worker's lock also waits, in the same statement, for the CreateRun still recording the run
(`acquire(recorded_within=…)`: the recording lock CreateRun's transaction holds, see `store`):
a job JetStream delivers before that commit then costs no statement more than one after it.
A worker's first look also claims the run in that statement (`claim_as`), once the run's and
its thread's locks are both taken: a PL/pgSQL function (`runs_lock_and_claim`, migration
agents_0009) whose claim, a statement of its own, sees what the commit it waited for wrote
(one SQL statement's snapshot is taken before its lock waits). The worker takes that claim
(`take_claim`) instead of claiming on a pooled connection: one round trip for the lock and
the claim.

**One executor per thread.** A worker's lock (`exclusive`) also takes, in the same statement and
only once the run's lock is its, the run's *thread* lock: a session lock too, on the same
connection, released with it (`pg_advisory_unlock_all`) — so a SIGKILLed worker, or a takeover
terminating a frozen holder's backend, frees both at once. A run's status says nothing about its
executor: a CANCELLED run's worker may still be stopping its graph (and writing its checkpoints)
for a few seconds, while the next run of the thread is already admitted. The thread's id comes
with the job (`queue`), else from the run's row in that statement. A holder of the run's lock
that finds the thread held (`thread_busy`) waits for it, bounded (`wait_thread`), or gives the
run back; a thread holder silent for the heartbeat timeout is taken over as a run's would be.

**A silent holder loses the run.** PostgreSQL frees a session lock only when the connection
dies, and a frozen process's connection does not (the kernel answers its keepalives). The
holder's heartbeat runs `check()` every second on the lock's connection, so the backend's
`pg_stat_activity.state_change` says when it last did; `take_over()` terminates a backend
holding the lock that has been idle for RUN_HEARTBEAT_TIMEOUT_SECONDS and takes the lock.

**Fencing.** The holder learns it lost the lock only at its next check, so a frozen worker that
resumes must not write in between: its lock carries the run's attempt (`fence`, the claim's
count: a takeover claims again, attempt + 1), which `check()` compares in its status read (a
lock taken again after the new holder finished is still not the run), the run's end and pause
compare it in their UPDATE (`store`), and every write of the pick-up first calls `still_held()`:
free while the last check is recent (a lease of half the heartbeat timeout, counted from before
that check was sent), else a check first. A frozen holder's lease has run out when it resumes
(the takeover waited twice as long), so its first write checks and finds the lock lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from amelia_agents.models import TERMINAL_STATES
from amelia_agents.pgdriver import discard, driver
from amelia_common.logging import get_logger

log = get_logger("amelia.agents.locks")

# Sent to asyncpg as they are (`pgdriver.driver`), outside a transaction: one statement each.
_LOCK = "SELECT pg_try_advisory_lock($1)"
# The run's lock, then (left to right) a lock_timeout for this statement's implicit transaction
# alone and the shared recording lock, released with it: the lock taken once nothing records
# the run any more.
_LOCK_RECORDED = (
    "SELECT pg_try_advisory_lock($1), set_config('lock_timeout', $2, true), "
    "pg_advisory_xact_lock_shared($3, $4)"
)
LOCK_NOT_AVAILABLE = "55P03"
# A thread's lock key from its id, as `lock_key` computes it (the UUID's first 8 bytes, 63 bits).
_SQL_KEY = "(('x' || left(replace(thread_id::text, '-', ''), 16))::bit(64)::bigint & {mask})"
_MASK = 0x7FFFFFFFFFFFFFFF
# The thread of a run known from its job ($2), else read from its row (not visible yet to this
# statement's snapshot while CreateRun records it: then NULL, and the thread is taken after).
_THREAD_KEY = (
    f"coalesce($2::bigint, (SELECT {_SQL_KEY.format(mask=_MASK)} FROM runs WHERE id = $3))"
)
# The run's lock and, only once it is taken, the thread's (NULL: the thread is not known yet):
# one statement. The subquery is not flattened (OFFSET 0), so each lock is tried once, in order.
_LOCK_EXCLUSIVE = (
    "SELECT run, key, CASE WHEN run THEN pg_try_advisory_lock(key) END AS thread FROM ("
    f"SELECT pg_try_advisory_lock($1) AS run, {_THREAD_KEY} AS key OFFSET 0) taken"
)
_LOCK_EXCLUSIVE_RECORDED = (
    "SELECT run, key, CASE WHEN run THEN pg_try_advisory_lock(key) END AS thread FROM ("
    f"SELECT pg_try_advisory_lock($1) AS run, set_config('lock_timeout', $4, true), "
    f"pg_advisory_xact_lock_shared($5, $6), {_THREAD_KEY} AS key OFFSET 0) taken"
)
# A worker's first look at a job (`acquire(claim_as=…)`): the run's lock, the wait for its
# recording, the thread's lock and — with both — the claim, in one statement: a PL/pgSQL
# function (migration agents_0009), whose statements each see what the commit waited for wrote.
# The run after it (`claimed`: whether this claim won) in the runs table's own columns.
_LOCK_AND_CLAIM = (
    "SELECT t.run_held, t.thread_key, t.thread_held, t.claimed, (t.run_row).* "
    "FROM runs_lock_and_claim($1, $2, $3, $4, $5, $6, $7, $8) t"
)
# Waiting for the thread's lock, at most $2 (a lock_timeout for this statement alone).
_WAIT_THREAD = "SELECT set_config('lock_timeout', $2, true), pg_advisory_lock($1)"
_UNLOCK = "SELECT pg_advisory_unlock($1)"
_UNLOCK_ALL = "SELECT pg_advisory_unlock_all()"
_STATUS = "SELECT status, attempt FROM runs WHERE id = $1"
_ENDED = {state.value for state in TERMINAL_STATES}
# The backend holding the run's lock (pg_advisory_lock(bigint): classid and objid are the key's
# high and low halves, objsubid 1): how long it has been idle, terminated (waiting up to
# :wait_ms for it to exit, and its locks with it) when that is :after seconds or more. A
# backend running a statement is not silent.
_TAKE_OVER = text(
    "SELECT a.pid, a.state = 'idle' AS idle, "
    "extract(epoch FROM now() - a.state_change)::float8 AS silent, "
    "CASE WHEN a.state = 'idle' AND a.state_change <= now() - make_interval(secs => :after) "
    "THEN pg_terminate_backend(a.pid, :wait_ms) ELSE false END AS terminated "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.classid = :high AND l.objid = :low "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
_TERMINATE_WAIT_MS = 5000


class LockLostError(Exception):
    """This holder lost the run: PostgreSQL dropped its lock and another holder has taken it
    since, or the run was claimed again (a takeover) — this holder must write nothing more."""


def run_lock_key(run_id: uuid.UUID) -> int:
    """A 63-bit advisory-lock key for the run (or the thread: `thread_lock_key`)."""
    return int.from_bytes(run_id.bytes[:8], "big") & _MASK


thread_lock_key = run_lock_key


class RunLock:
    def __init__(
        self, engine: AsyncEngine, run_id: uuid.UUID, recording: tuple[int, int] | None = None
    ) -> None:
        self.engine = engine
        self.run_id = run_id
        self.key = run_lock_key(run_id)
        self.recording = recording  # (space, key) of the run's recording lock, see `store`
        self._conn: AsyncConnection | None = None
        self._pg: Any = None  # the asyncpg connection under `_conn`
        # The run's attempt this holder claimed, and how long a check proves the lock (`fence`).
        self.attempt: int | None = None
        self.lease_seconds = 0.0
        self._taken_at = 0.0  # time.monotonic() before the statement that took the lock
        self._checked_at: float | None = None  # and before the last check that proved it
        self._lost: LockLostError | None = None  # once lost, lost for good
        self._checking = asyncio.Lock()  # one statement at a time on the lock's connection
        # `exclusive`: the run's thread is locked with it (one executor per thread).
        self.exclusive = False
        self.thread_key: int | None = None  # the thread's key, once known
        self.thread_held = False
        self.thread_busy = False  # the last try found the thread's lock another's
        # `acquire(claim_as=…)`'s claim, until `take_claim`: the run after it (a record of the
        # runs table's columns, plus `claimed`), when its locks were both taken.
        self._claimed: Any = None

    def exclusive_thread(self, thread_id: uuid.UUID | None) -> None:
        """Take the run's thread's lock with the run's (`thread_id` if known: else it is read
        from the run's row in the same statement)."""
        self.exclusive = True
        self.thread_key = thread_lock_key(thread_id) if thread_id is not None else None

    @property
    def held(self) -> bool:
        return self._conn is not None

    async def acquire(
        self, recorded_within: float | None = None, claim_as: str | None = None
    ) -> bool:
        """Take the lock if nobody holds it; False when somebody does. With `recorded_within`
        (and `recording`), once no CreateRun is recording the run any more, waiting at most
        that many seconds for its commit (then as without). With `claim_as` too (`exclusive`),
        the run is claimed for that worker in the same statement once both locks are taken
        (`take_claim`); when its recording is not over in time, the lock is taken without."""
        conn = await self.engine.connect()
        sent = time.monotonic()
        self.thread_held = self.thread_busy = False
        self._claimed = None
        try:
            pg = await driver(conn)
            recording = self.recording if recorded_within is not None else None
            if self.exclusive and claim_as is not None and recording is not None:
                assert recorded_within is not None
                taken = await self._lock_and_claim(pg, recorded_within, recording, claim_as)
            elif self.exclusive:
                taken = await self._lock_exclusive(pg, recorded_within, recording)
            elif recorded_within is None or recording is None:
                taken = bool(await pg.fetchval(_LOCK, self.key))
            else:
                space, key = recording
                timeout = _ms(recorded_within)
                taken = bool(await pg.fetchval(_LOCK_RECORDED, self.key, timeout, space, key))
        except BaseException as exc:
            # Whether the run's lock was taken before a wait timed out is not known: the
            # connection goes, and the lock with it.
            await discard(conn)
            if getattr(exc, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                return await self.acquire()
            raise
        if not taken:
            await conn.close()
            return False
        self._conn, self._pg = conn, pg
        self._taken_at = sent
        return True

    async def _lock_exclusive(
        self, pg: Any, recorded_within: float | None, recording: tuple[int, int] | None
    ) -> bool:
        """The run's lock, then the thread's (`exclusive`): one statement. Whether the run's
        was taken; `thread_held` / `thread_busy` say how the thread's went (neither: not known
        yet, see `hold_thread`)."""
        if recorded_within is None or recording is None:
            found = await pg.fetchrow(_LOCK_EXCLUSIVE, self.key, self.thread_key, self.run_id)
        else:
            found = await pg.fetchrow(
                _LOCK_EXCLUSIVE_RECORDED,
                self.key,
                self.thread_key,
                self.run_id,
                _ms(recorded_within),
                *recording,
            )
        if found["key"] is not None:
            self.thread_key = int(found["key"])
        self.thread_held = found["thread"] is True
        self.thread_busy = found["thread"] is False
        return bool(found["run"])

    async def _lock_and_claim(
        self, pg: Any, recorded_within: float, recording: tuple[int, int], worker: str
    ) -> bool:
        """`_lock_exclusive` waiting for the run's recording, and the claim with both locks
        taken: one statement (`_LOCK_AND_CLAIM`)."""
        found = await pg.fetchrow(
            _LOCK_AND_CLAIM,
            self.key,
            self.thread_key,
            self.run_id,
            _ms(recorded_within),
            *recording,
            datetime.now(UTC),
            worker,
        )
        if found["thread_key"] is not None:
            self.thread_key = int(found["thread_key"])
        self.thread_held = found["thread_held"] is True
        self.thread_busy = found["thread_held"] is False
        if found["run_held"] and not self.thread_busy:
            self._claimed = found
        return bool(found["run_held"])

    def take_claim(self) -> Any:
        """The claim `acquire(claim_as=…)` made (the run after it, with `claimed`), once; None
        when it made none (the lock not taken, the thread another executor's, or the lock taken
        without it)."""
        claimed, self._claimed = self._claimed, None
        return claimed

    async def hold_thread(self, thread_id: uuid.UUID) -> bool:
        """Whether this holder has `thread_id`'s lock now: taken if it did not (a job whose
        thread was not known when the run's lock was taken); False when another holds it."""
        key = thread_lock_key(thread_id)
        if self.thread_held and self.thread_key == key:
            return True
        async with self._checking:
            if self.thread_held:  # another thread's (a job naming the wrong one): let it go
                await self._pg.fetchval(_UNLOCK, self.thread_key)
            self.thread_key = key
            self.thread_held = bool(await self._pg.fetchval(_LOCK, key))
        self.thread_busy = not self.thread_held
        return self.thread_held

    async def wait_thread(self, seconds: float) -> bool:
        """Wait at most `seconds` for the thread's lock (`thread_busy`), on the run lock's
        connection; whether it is this holder's now. Cancelling the task stops the wait."""
        if self.thread_key is None or self._pg is None:
            return False
        try:
            async with self._checking:
                await self._pg.fetchval(_WAIT_THREAD, self.thread_key, _ms(seconds))
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            return False
        self.thread_held, self.thread_busy = True, False
        return True

    def fence(self, attempt: int, lease_seconds: float) -> None:
        """From now on this holder is the run's `attempt`: a check that finds another fails,
        and a check proves the lock for `lease_seconds` (`ensure_held`)."""
        self.attempt = attempt
        self.lease_seconds = lease_seconds
        self._checked_at = self._taken_at  # the claim came after the lock was taken

    async def check(self) -> str | None:
        """The run's status, read on the lock's connection, so an answer proves the lock held.

        If PostgreSQL dropped the connection (a restart, or a takeover), the lock is taken again
        on a new one; `LockLostError` if another holder has it by then, or if the run's attempt
        is not this holder's any more (`fence`). Raises PostgreSQL's error while it cannot be
        reached (the lock may or may not be ours then).
        """
        async with self._checking:
            return await self._check()

    async def _check(self) -> str | None:
        if self._lost is not None:
            raise self._lost
        try:
            return await self._read_status()
        except LockLostError as exc:
            self._lost, self._checked_at = exc, None
            raise

    async def _read_status(self) -> str | None:
        if self._conn is not None:
            sent = time.monotonic()
            try:
                found = await self._pg.fetchrow(_STATUS, self.run_id)
            except Exception:  # noqa: BLE001 - the connection is gone, and the lock with it
                conn, self._conn, self._pg = self._conn, None, None
                await discard(conn)
            else:
                if found is None:
                    return None
                if self.attempt is not None and found["attempt"] != self.attempt:
                    raise LockLostError(
                        f"runs/{self.run_id} was taken over: attempt {found['attempt']}, "
                        f"this holder's was {self.attempt}"
                    )
                self._checked_at = sent
                return str(found["status"])
        if not await self.acquire():
            raise LockLostError(f"runs/{self.run_id} is locked by another worker")
        if self.exclusive and not self.thread_held:
            await self.release()  # (lost for good: see `release`)
            raise LockLostError(f"runs/{self.run_id}: its thread is another run's now")
        status = await self._read_status()
        if self.exclusive and status in _ENDED:
            # Its thread may have been taken over (this holder silent) and another run of it
            # executed meanwhile: an ended run's holder does not take the thread back.
            await self.release()
            raise LockLostError(f"runs/{self.run_id} ended ({status}) while its lock was gone")
        return status

    async def ensure_held(self) -> None:
        """Return if the lock is still this holder's: at once while the last check is younger
        than the lease, else after a check. `LockLostError` if it is not."""
        if self._fresh():
            return
        async with self._checking:
            if not self._fresh():  # (unless a check ran while this one waited)
                await self._check()

    def _fresh(self) -> bool:
        checked = self._checked_at
        return checked is not None and time.monotonic() - checked < self.lease_seconds

    async def take_over(self, silent_for: float, thread: bool = False) -> float:
        """Take the lock from a holder idle on its connection for `silent_for` seconds or more:
        its backend is terminated (logged). 0 once the lock is this holder's; else how many
        seconds until its holder would have been silent that long (try again then). With
        `thread`, the thread's lock (`thread_busy`), for a holder of the run's: 0 once nobody
        holds it any more (its holder terminated: `wait_thread` takes it)."""
        key = self.thread_key if thread and self.thread_key is not None else self.key
        high, low = key >> 32, key & 0xFFFFFFFF
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            holder = (
                await conn.execute(
                    _TAKE_OVER,
                    {"after": silent_for, "wait_ms": _TERMINATE_WAIT_MS, "high": high, "low": low},
                )
            ).first()
        if holder is not None and not holder.terminated:
            if not holder.idle:
                return silent_for
            silent = float(holder.silent)
            if silent >= silent_for:  # pg_terminate_backend gave up waiting for it to exit
                log.warning("a silent holder's backend did not exit", run=str(self.run_id))
            return max(silent_for - silent, 0.1)
        if not thread and not await self.acquire():
            return silent_for  # another contender was quicker (or a new holder came)
        if holder is not None:
            log.warning(
                "took a thread over from a holder that stopped heartbeating"
                if thread
                else "took a run over from a holder that stopped heartbeating",
                run=str(self.run_id),
                silent_seconds=round(float(holder.silent), 1),
                backend_pid=holder.pid,
            )
        return 0.0

    async def release(self) -> None:
        """Let the run's lock go (and the thread's, `exclusive`: both in one statement). A
        pick-up's writes (`still_held`) fail from now on: its graph may still be unwinding."""
        conn, pg, self._conn, self._pg = self._conn, self._pg, None, None
        if self.attempt is not None and self._lost is None:
            self._lost = LockLostError(f"runs/{self.run_id}: this pick-up let its lock go")
            self._checked_at = None
        # `exclusive`: all the connection's locks, the thread's too even when not known to be
        # held (a wait for it cancelled just as PostgreSQL granted it).
        held_thread, self.thread_held = self.thread_held or self.exclusive, False
        if conn is None:
            return
        try:
            if held_thread:
                await pg.fetchval(_UNLOCK_ALL)
            else:
                await pg.fetchval(_UNLOCK, self.key)
        except Exception:  # noqa: BLE001 - never hand a pooled connection back still locked
            await discard(conn)
            return
        with contextlib.suppress(Exception):
            await conn.close()


def _ms(seconds: float) -> str:
    """A lock_timeout of `seconds` (at least 1 ms)."""
    return f"{max(int(seconds * 1000), 1)}ms"


# What the pick-up of this task holds (`holding`), for `still_held`.
_HELD: contextvars.ContextVar[RunLock | None] = contextvars.ContextVar(
    "amelia_run_lock", default=None
)


@contextlib.contextmanager
def holding(lock: RunLock) -> Iterator[None]:
    """Within: `still_held()` (in this task and the tasks it starts) checks `lock`."""
    token = _HELD.set(lock)
    try:
        yield
    finally:
        _HELD.reset(token)


def held_lock() -> RunLock | None:
    """The run lock this task's pick-up holds (`holding`), if any."""
    return _HELD.get()


async def still_held() -> None:
    """Before a pick-up writes: `LockLostError` unless its run's lock (`holding`) is still
    this worker's. No round trip while the lock's last check is recent (see the module)."""
    lock = _HELD.get()
    if lock is not None:
        await lock.ensure_held()
