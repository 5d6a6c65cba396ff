"""One executor per run: the run's PostgreSQL advisory lock, on a connection of its own.

A worker holds the lock while it executes a run, so a job JetStream delivers twice (or a second
job for the same run) never runs it twice at once; the reconciler takes it for an instant to
know that no worker has the run. A session-level lock dies with its connection: a SIGKILLed
worker's lock is gone at once — and so is a live worker's when PostgreSQL restarts. `check()`
notices that and takes the lock again, or reports that another worker has the run by then.

The lock's connection is in autocommit: taking, checking and releasing are one statement each
(no BEGIN/COMMIT around them), and no transaction stays open while the run executes.

A worker's lock also waits, in the same statement, for the CreateRun still recording the run
(`acquire(recorded_within=…)`: the recording lock CreateRun's transaction holds, see `store`):
a job JetStream delivers before that commit then costs no statement more than one after it.
"""

from __future__ import annotations

import contextlib
import uuid

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_LOCK = text("SELECT pg_try_advisory_lock(:k)")
# The run's lock, then (left to right) a lock_timeout for this statement's implicit transaction
# alone and the shared recording lock, released with it: the lock taken once nothing records
# the run any more.
_LOCK_RECORDED = text(
    "SELECT pg_try_advisory_lock(:k), set_config('lock_timeout', :timeout, true), "
    "pg_advisory_xact_lock_shared(:space, :key)"
)
LOCK_NOT_AVAILABLE = "55P03"
_UNLOCK = text("SELECT pg_advisory_unlock(:k)")
_STATUS = text("SELECT status FROM runs WHERE id = :id")


class LockLostError(Exception):
    """PostgreSQL dropped this holder's lock and another holder has taken it since."""


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

    @property
    def held(self) -> bool:
        return self._conn is not None

    async def acquire(self, recorded_within: float | None = None) -> bool:
        """Take the lock if nobody holds it; False when somebody does. With `recorded_within`
        (and `recording`), once no CreateRun is recording the run any more, waiting at most
        that many seconds for its commit (then as without)."""
        conn = await self.engine.connect()
        try:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            if recorded_within is None or self.recording is None:
                taken = bool(await conn.scalar(_LOCK, {"k": self.key}))
            else:
                space, key = self.recording
                timeout = f"{max(int(recorded_within * 1000), 1)}ms"
                found = await conn.execute(
                    _LOCK_RECORDED, {"k": self.key, "timeout": timeout, "space": space, "key": key}
                )
                taken = bool(found.scalar())
        except DBAPIError as exc:
            # Whether the run's lock was taken before the wait timed out is not known: the
            # connection goes, and the lock with it.
            await _discard(conn)
            if getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                return await self.acquire()
            raise
        except BaseException:
            await _discard(conn)
            raise
        if not taken:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def check(self) -> str | None:
        """The run's status, read on the lock's connection, so an answer proves the lock held.

        If PostgreSQL dropped the connection (a restart), the lock is taken again on a new one;
        `LockLostError` if another holder has it by then. Raises PostgreSQL's error while it
        cannot be reached (the lock may or may not be ours then).
        """
        if self._conn is not None:
            try:
                status = await self._conn.scalar(_STATUS, {"id": self.run_id})
                return None if status is None else str(status)
            except Exception:  # noqa: BLE001 - the connection is gone, and the lock with it
                conn, self._conn = self._conn, None
                await _discard(conn)
        if not await self.acquire():
            raise LockLostError(f"runs/{self.run_id} is locked by another worker")
        return await self.check()

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.execute(_UNLOCK, {"k": self.key})
        except Exception:  # noqa: BLE001 - never hand a pooled connection back still locked
            await _discard(conn)
            return
        with contextlib.suppress(Exception):
            await conn.close()


async def _discard(conn: AsyncConnection) -> None:
    """Close the connection for good (not back to the pool): whatever it holds dies with it."""
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()
