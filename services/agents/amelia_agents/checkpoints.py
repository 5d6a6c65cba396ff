"""LangGraph's PostgreSQL checkpointer on a psycopg pool, its tables set up once per database.

After a PostgreSQL restart a run gets a new connection instead of a dead one (and while
PostgreSQL is down, waits up to the pool's timeout for it to come back): the pool checks a
connection before handing it out — with a round trip only when the server has said something
to it while it was idle (`_check_if_spoken_to`), which an idle connection hears only when the
server closes it. A step's checkpoint writes take a connection each, so a check per checkout
was a round trip per write."""

from __future__ import annotations

import asyncio
import select
import zlib
from typing import Any

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import dict_row
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
    """A pool and a saver on it; the saver's tables are created/migrated under an advisory lock."""
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
