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
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
_UNLOCK = "SELECT pg_advisory_unlock($1)"
_STATUS = "SELECT status, attempt FROM runs WHERE id = $1"
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
    """A 63-bit advisory-lock key for the run."""
    return int.from_bytes(run_id.bytes[:8], "big") & 0x7FFFFFFFFFFFFFFF


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

    @property
    def held(self) -> bool:
        return self._conn is not None

    async def acquire(self, recorded_within: float | None = None) -> bool:
        """Take the lock if nobody holds it; False when somebody does. With `recorded_within`
        (and `recording`), once no CreateRun is recording the run any more, waiting at most
        that many seconds for its commit (then as without)."""
        conn = await self.engine.connect()
        sent = time.monotonic()
        try:
            pg = await driver(conn)
            if recorded_within is None or self.recording is None:
                taken = bool(await pg.fetchval(_LOCK, self.key))
            else:
                space, key = self.recording
                timeout = f"{max(int(recorded_within * 1000), 1)}ms"
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
        return await self._read_status()

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

    async def take_over(self, silent_for: float) -> float:
        """Take the lock from a holder idle on its connection for `silent_for` seconds or more:
        its backend is terminated (logged). 0 once the lock is this holder's; else how many
        seconds until its holder would have been silent that long (try again then)."""
        high, low = self.key >> 32, self.key & 0xFFFFFFFF
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
        if not await self.acquire():  # another contender was quicker (or a new holder came)
            return silent_for
        if holder is not None:
            log.warning(
                "took a run over from a holder that stopped heartbeating",
                run=str(self.run_id),
                silent_seconds=round(float(holder.silent), 1),
                backend_pid=holder.pid,
            )
        return 0.0

    async def release(self) -> None:
        conn, pg, self._conn, self._pg = self._conn, self._pg, None, None
        if conn is None:
            return
        try:
            await pg.fetchval(_UNLOCK, self.key)
        except Exception:  # noqa: BLE001 - never hand a pooled connection back still locked
            await discard(conn)
            return
        with contextlib.suppress(Exception):
            await conn.close()


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
