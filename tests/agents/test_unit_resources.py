"""An agents process's resources (`amelia_agents.resources`): opened in order, and a start that
stops half-way closes what it had opened. On a scratch database of the session's PostgreSQL, so
the connections counted are this test's only."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from amelia_agents.resources import _close_all
from amelia_agents.server import build_service
from amelia_common.db import libpq_url

DEADLINE_SECONDS = 60.0


async def _until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_SECONDS
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"still not: {what}"
        await asyncio.sleep(0.1)


async def test_a_start_stopped_half_way_leaves_no_connection_open(infra: Any) -> None:
    """The build is stopped while it waits for NATS, after PostgreSQL's pools are open."""
    nats_reached = asyncio.Event()

    async def silent_nats(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nats_reached.set()  # and never say INFO: the client waits
        await reader.read()

    listener = await asyncio.start_server(silent_nats, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with infra.scratch_database("resources") as url:
        database = make_url(url).database
        admin = await asyncpg.connect(libpq_url(infra.database_url))

        async def connections() -> int:
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
            return int(await admin.fetchval(query, database))

        try:
            settings = infra.settings(DATABASE_URL=url, NATS_URL=f"nats://127.0.0.1:{port}")
            building = asyncio.create_task(build_service(settings))
            await _until("the build connects to NATS", _event(nats_reached, building))
            assert await connections() > 0, "the database and the checkpointer were open"
            building.cancel()
            with pytest.raises(asyncio.CancelledError):
                await building
            await _until("every connection closed", _zero(connections))
        finally:
            await admin.close()
            listener.close()


def _event(event: asyncio.Event, task: asyncio.Task[Any]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        if task.done():
            task.result()  # a build that failed early says why
            raise AssertionError("the build ended before it reached NATS")
        return event.is_set()

    return check


def _zero(count: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await count() == 0

    return check


async def test_closing_goes_on_past_a_closer_that_fails() -> None:
    closed: list[str] = []

    async def first() -> None:
        closed.append("first")

    async def failing() -> None:
        raise RuntimeError("cannot close")

    async def last() -> None:
        closed.append("last")

    await _close_all([first, failing, last])
    assert closed == ["last", "first"]
