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
