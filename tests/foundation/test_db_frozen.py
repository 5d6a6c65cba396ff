"""A frozen PostgreSQL (SIGSTOP) through the services' own engine (`amelia_common.db`): a
statement already sent waits for its caller's deadline; the next call, although the pool holds
idle connections to the frozen server, connects afresh and fails UNAVAILABLE naming PostgreSQL
after the connect timeout; once PostgreSQL runs again, so does the engine.

The deadlines are far above the 1 s connect timeout, so which one ends a call says what it
waited for; no duration is asserted."""

from __future__ import annotations

import asyncio

import pytest
from frozen_postgres import frozen
from frozen_postgres import own_postgres_server as own_postgres_server  # the fixture
from sqlalchemy.ext.asyncio import AsyncEngine

from amelia_common.db import create_engine, select_one
from amelia_common.embedded import EmbeddedPostgres
from amelia_common.errors import dependency_unavailable
from amelia_common.settings import Settings

IDLE = 3


async def _idle_connections(engine: AsyncEngine) -> None:
    """`IDLE` connections in use together, then all back in the pool, idle."""
    together = asyncio.Barrier(IDLE)

    async def use_one() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
            await together.wait()

    await asyncio.gather(*(use_one() for _ in range(IDLE)))


async def test_a_frozen_postgres_fails_the_next_call_unavailable_and_recovers(
    own_postgres_server: tuple[EmbeddedPostgres, str], settings: Settings
) -> None:
    server, url = own_postgres_server
    engine = create_engine(
        settings.model_copy(
            update={"DATABASE_POOL_SIZE": IDLE, "DATABASE_CONNECT_TIMEOUT_SECONDS": 1}
        ),
        url,
    )
    try:
        await _idle_connections(engine)
        with frozen(server):
            # On an idle pooled connection: sent, then waits until its caller gives up.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(10):
                    await select_one(engine)
            with pytest.raises(Exception) as failed:
                async with asyncio.timeout(120) as deadline:
                    await select_one(engine)
            assert not deadline.expired(), "the next call waited on an idle frozen connection"
        error = dependency_unavailable(failed.value)
        assert error is not None, repr(failed.value)
        assert error.message == (
            "PostgreSQL is unavailable: no answer in time (TimeoutError); try again shortly"
        )
        await select_one(engine)
    finally:
        await engine.dispose()


async def test_a_call_that_finds_every_pooled_connection_busy_says_so(
    own_postgres_server: tuple[EmbeddedPostgres, str], settings: Settings
) -> None:
    """A checkout that waits out DATABASE_POOL_TIMEOUT_SECONDS (every connection held: waiting
    on a frozen server, as a rule) is UNAVAILABLE naming PostgreSQL, said as what happened —
    for the services' engine and for the checkpoints' psycopg pool alike — not as the pool's
    own text ("QueuePool limit of size 2 overflow 2 reached, … (Background on this error at:
    https://sqlalche.me/…)", seen by a CI run)."""
    from psycopg_pool import AsyncConnectionPool

    from amelia_common.db import libpq_url

    _, url = own_postgres_server
    engine = create_engine(
        settings.model_copy(
            update={
                "DATABASE_POOL_SIZE": 1,
                "DATABASE_MAX_OVERFLOW": 1,
                "DATABASE_POOL_TIMEOUT_SECONDS": 0.5,
            }
        ),
        url,
    )
    pool = AsyncConnectionPool(libpq_url(url), min_size=1, max_size=1, timeout=0.5, open=False)
    await pool.open()
    try:
        async with engine.connect() as first, engine.connect() as second:
            await first.exec_driver_sql("SELECT 1")
            await second.exec_driver_sql("SELECT 1")
            with pytest.raises(Exception) as busy:
                await select_one(engine)
        async with pool.connection():
            with pytest.raises(Exception) as psycopg_busy:
                async with pool.connection():
                    pass
    finally:
        await pool.close()
        await engine.dispose()
    said = [dependency_unavailable(busy.value), dependency_unavailable(psycopg_busy.value)]
    assert [error.message if error else repr(error) for error in said] == [
        "PostgreSQL is unavailable: no pooled connection came free in 0.5 s (all 2 in use;"
        " DATABASE_POOL_TIMEOUT_SECONDS); try again shortly",
        "PostgreSQL is unavailable: no pooled connection came free in 0.5 s"
        " (DATABASE_POOL_TIMEOUT_SECONDS); try again shortly",
    ]
