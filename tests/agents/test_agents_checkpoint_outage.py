"""A pick-up's checkpoint connection broken by a PostgreSQL outage longer than the pool's wait
(DATABASE_POOL_TIMEOUT_SECONDS): the pick-up stops (PoolTimeout, PostgreSQL unavailable), the
broken connection goes back to the pool once, and the pool replaces it once. Before, every
retry of the write behind and the pick-up's end gave the same broken connection back again, and
each return made the pool open one more: 4 returns, 3 connections over max_size after it.

And once PostgreSQL is back after a long outage, the first checkout connects: psycopg_pool's
reconnect delay doubles without bound (1, 2, 4, 8, 16 s…), so before, a pick-up after a 16 s
outage waited for the next scheduled try, 15 s later, and timed out (QA: runs used up 3 of
their 5 pick-ups on a PostgreSQL that had been back for half a minute)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from frozen_postgres import own_postgres_server as own_postgres_server  # the fixture
from langgraph.checkpoint.base import empty_checkpoint
from psycopg_pool import PoolTimeout

from amelia_agents.checkpoints import RunSaver, for_pickup, open_checkpointer
from amelia_common.embedded import EmbeddedPostgres
from amelia_common.errors import dependency_unavailable
from amelia_common.settings import Settings


def _checkpoint(value: str) -> tuple[Any, Any]:
    checkpoint: dict[str, Any] = dict(empty_checkpoint())
    checkpoint["channel_values"] = {"note": value}
    checkpoint["channel_versions"] = {"note": 1}
    return checkpoint, {"note": 1}


async def _checkpointer(settings: Settings, url: str) -> tuple[Any, Any]:
    """A checkpoint pool of 2 on the test's own PostgreSQL that waits 1 s for a connection."""
    return await open_checkpointer(
        settings.model_copy(update={"DATABASE_URL": url, "DATABASE_POOL_TIMEOUT_SECONDS": 1}),
        max_size=2,
    )


async def test_a_connection_broken_in_a_long_outage_is_given_back_once(
    own_postgres_server: tuple[EmbeddedPostgres, str], settings: Settings
) -> None:
    server, url = own_postgres_server
    pool, shared = await _checkpointer(settings, url)
    config: Any = {"configurable": {"thread_id": uuid.uuid4().hex, "checkpoint_ns": ""}}
    try:
        async with for_pickup(shared) as saver:
            assert isinstance(saver, RunSaver)
            checkpoint, versions = _checkpoint("before")
            await saver.aput(config, checkpoint, {"source": "input", "step": -1}, versions)
            await saver.drain()
            await asyncio.to_thread(server.stop)
            # Written behind while PostgreSQL is down for longer than the pool waits.
            checkpoint, versions = _checkpoint("during")
            await saver.aput(config, checkpoint, {"source": "loop", "step": 0}, versions)
            with pytest.raises(PoolTimeout) as failed:
                await saver.drain()
        unavailable = dependency_unavailable(failed.value)
        assert unavailable is not None and unavailable.dependency == "PostgreSQL"
        await asyncio.to_thread(server.start)
        assert pool.get_stats().get("returns_bad", 0) == 1
        pool.timeout = 10  # the first checkout after the restart connects (see below)
        async with for_pickup(shared) as saver:  # the pool works again
            read = await saver.aget_tuple(config)
        assert read is not None and read.checkpoint["channel_values"] == {"note": "before"}
    finally:
        await pool.close()


@pytest.mark.slow
async def test_the_first_checkout_after_a_long_outage_connects(
    own_postgres_server: tuple[EmbeddedPostgres, str], settings: Settings
) -> None:
    server, url = own_postgres_server
    pool, shared = await _checkpointer(settings, url)
    config: Any = {"configurable": {"thread_id": uuid.uuid4().hex, "checkpoint_ns": ""}}
    try:
        assert await shared.aget_tuple(config) is None
        await asyncio.to_thread(server.stop)
        with pytest.raises(PoolTimeout):  # the pool starts reconnecting, and fails
            await shared.aget_tuple(config)
        # Down for longer than the retries' doubling delays add up to before 16 s (1+2+4+8):
        # psycopg_pool alone would next try 16 s after that.
        await asyncio.sleep(16)
        await asyncio.to_thread(server.start)
        pool.timeout = 5
        assert await shared.aget_tuple(config) is None  # connects now, not at the next retry
    finally:
        await pool.close()
