"""LangGraph's PostgreSQL checkpointer on a psycopg pool, its tables set up once per database.

The pool checks each connection before handing it out, so after a PostgreSQL restart a run gets
a new connection instead of a dead one (and while PostgreSQL is down, waits up to the pool's
timeout for it to come back)."""

from __future__ import annotations

import zlib

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from amelia_common.db import libpq_url
from amelia_common.settings import Settings

_SETUP_LOCK = zlib.crc32(b"amelia_agents_checkpoints") & 0x7FFFFFFF


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
        check=AsyncConnectionPool.check_connection,
        name="amelia-agents-checkpoints",
    )
    await pool.open(wait=True, timeout=30)
    saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK,))
        try:
            await saver.setup()
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))
    return pool, saver
