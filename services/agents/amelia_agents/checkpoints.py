"""LangGraph's PostgreSQL checkpointer on a psycopg pool, its tables set up once per database.

After a PostgreSQL restart a run gets a new connection instead of a dead one (and while
PostgreSQL is down, waits up to the pool's timeout for it to come back): the pool checks a
connection before handing it out — with a round trip only when the server has said something
to it while it was idle (`_check_if_spoken_to`), which an idle connection hears only when the
server closes it. A step's checkpoint writes take a connection each, so a check per checkout
was a round trip per write.

A pick-up checkpoints through `RunSaver` (`for_pickup`): one pooled connection for its whole
pick-up instead of a checkout per read and write, and the thread's latest checkpoint read once
for both the executor (start, resume or continue?) and LangGraph's own first read."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import select
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from amelia_common.db import libpq_url
from amelia_common.settings import Settings

_SETUP_LOCK = zlib.crc32(b"amelia_agents_checkpoints") & 0x7FFFFFFF
# Polled, not waited for: a replica blocked in pg_advisory_lock holds a snapshot open, and the
# setup's CREATE INDEX CONCURRENTLY in the replica holding the lock waits for every open snapshot
# to end — both would hang (seen with two replicas starting together on a fresh database).
_LOCK_POLL_SECONDS = 0.2


async def open_checkpointer(
    settings: Settings, max_size: int | None = None
) -> tuple[AsyncConnectionPool, AsyncPostgresSaver]:
    """A pool and a saver on it; the saver's tables are created/migrated under an advisory lock.

    A pick-up holds one of the pool's connections (`RunSaver`): the caller sizes the pool for
    its worker loops (`resources.open_resources`: DATABASE_POOL_SIZE plus one per loop)."""
    pool: AsyncConnectionPool = AsyncConnectionPool(
        conninfo=libpq_url(settings.DATABASE_URL),
        min_size=1,
        max_size=max_size or settings.DATABASE_POOL_SIZE,
        # What AsyncPostgresSaver expects of its connections.
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        open=False,
        check=_check_if_spoken_to,
        name="amelia-agents-checkpoints",
    )
    await pool.open(wait=True, timeout=30)
    saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
    try:
        async with pool.connection() as conn:
            await _take_setup_lock(conn)
            try:
                await saver.setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))
    except BaseException:
        await pool.close()  # the caller never gets the pool to close
        raise
    return pool, saver


async def _check_if_spoken_to(conn: AsyncConnection[Any]) -> None:
    """Pool checkout: raise (the pool opens another connection) if `conn` is closed, or if the
    server sent it something while it was idle and a round trip then finds it dead."""
    if conn.closed or _readable(conn.fileno()):
        await AsyncConnectionPool.check_connection(conn)


def _readable(fd: int) -> bool:
    """Whether the socket has something to read (or its end) right now, without waiting."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


async def _take_setup_lock(conn: AsyncConnection[Any]) -> None:
    while True:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s) AS taken", (_SETUP_LOCK,))
        row = await cursor.fetchone()
        if row and row["taken"]:
            return
        await asyncio.sleep(_LOCK_POLL_SECONDS)


_NOTHING_KEPT: Any = object()


class RunSaver(AsyncPostgresSaver):
    """The checkpointer of one pick-up, on one connection of the shared pool held for it.

    The pool's saver checks a connection out (and back) for every read and write — about five
    per node — and serializes all of them, every run's, on its one lock. A pick-up's reads and
    writes are sequential anyway (LangGraph awaits each under durability "sync"), so it keeps
    one connection, checked before each use as the pool checks one (`_check_if_spoken_to`)
    and replaced from the pool if PostgreSQL closed it (a restart while a node ran).

    `keep_latest_read()`: the next read of the thread's latest checkpoint keeps its row, and
    the read after it is answered from that row (decoded afresh from a copy, as a second read
    from PostgreSQL would be). The executor reads the checkpoint to choose how to start, then
    LangGraph reads it again to start; nothing writes to the thread between the two (the run's
    lock, one active run per thread), and any write through this saver forgets the row.
    """

    def __init__(
        self, pool: AsyncConnectionPool[Any], conn: AsyncConnection[Any], shared: AsyncPostgresSaver
    ) -> None:
        super().__init__(conn, serde=shared.serde)
        self.pool = pool
        self._keep_next = False
        self._keeping = False
        self._kept: Any = _NOTHING_KEPT

    def keep_latest_read(self) -> None:
        self._keep_next = True

    @contextlib.asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[Any]:
        """AsyncPostgresSaver's cursor (no pipe of its own), on the held connection checked
        first, under the lock: a check only when nothing else is in flight on it."""
        async with self.lock:
            conn = self.conn
            assert isinstance(conn, AsyncConnection)
            try:
                await _check_if_spoken_to(conn)
            except Exception:  # noqa: BLE001 - closed by the server: take another
                await self.pool.putconn(conn)
                conn = self.conn = await self.pool.getconn()
            if pipeline and self.supports_pipeline:
                async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            elif pipeline:
                async with (
                    conn.transaction(),
                    conn.cursor(binary=True, row_factory=dict_row) as cur,
                ):
                    yield cur
            else:
                async with conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        latest = get_checkpoint_id(config) is None and not config["configurable"].get(
            "checkpoint_ns", ""
        )
        if latest and self._kept is not _NOTHING_KEPT:
            row, self._kept = self._kept, _NOTHING_KEPT
            return None if row is None else await self._load_checkpoint_tuple(copy.deepcopy(row))
        keep, self._keep_next = latest and self._keep_next, False
        if keep:
            self._kept = None  # what is kept when the thread has no checkpoint yet
        self._keeping = keep
        try:
            return await super().aget_tuple(config)
        finally:
            self._keeping = False

    async def _load_checkpoint_tuple(self, value: DictRow) -> CheckpointTuple:
        if self._keeping:
            self._keeping = False
            self._kept = copy.deepcopy(value)
        return await super()._load_checkpoint_tuple(value)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self._kept = _NOTHING_KEPT
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._kept = _NOTHING_KEPT
        await super().aput_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self._kept = _NOTHING_KEPT
        await super().adelete_thread(thread_id)


@contextlib.asynccontextmanager
async def for_pickup(saver: BaseCheckpointSaver[Any]) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """The saver one pick-up uses: a `RunSaver` on a connection of `saver`'s pool, given back
    at the end (the pool discards it if it broke); any other saver as it is."""
    pool = getattr(saver, "conn", None)
    if not isinstance(saver, AsyncPostgresSaver) or not isinstance(pool, AsyncConnectionPool):
        yield saver
        return
    run_saver = RunSaver(pool, await pool.getconn(), saver)
    try:
        yield run_saver
    finally:
        conn = run_saver.conn
        assert isinstance(conn, AsyncConnection)
        await pool.putconn(conn)
