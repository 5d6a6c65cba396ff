"""Every service's migrations apply on an empty database, are idempotent, and run once across
replicas starting together (advisory lock)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from amelia_agents.server import migrate as migrate_agents
from amelia_common.db import create_engine, libpq_url, run_migrations
from amelia_common.settings import Settings
from amelia_rag.server import MIGRATIONS as RAG_MIGRATIONS
from amelia_rag.server import VERSION_TABLE as RAG_VERSION_TABLE


@pytest.fixture
async def empty_database(infra: Any, settings: Settings) -> AsyncIterator[tuple[str, AsyncEngine]]:
    async with infra.scratch_database("empty") as url:
        engine = create_engine(settings, url)
        try:
            yield url, engine
        finally:
            await engine.dispose()


async def migrate_all(engine: AsyncEngine, settings: Settings) -> None:
    await migrate_agents(engine)
    await run_migrations(
        engine,
        RAG_MIGRATIONS,
        RAG_VERSION_TABLE,
        {"embedding_dimension": settings.EMBEDDING_DIMENSION},
    )


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def test_migrations_create_every_services_tables_on_an_empty_database(
    empty_database: tuple[str, AsyncEngine], settings: Settings
) -> None:
    url, engine = empty_database
    assert await tables(url) == set()
    await migrate_all(engine, settings)
    created = await tables(url)
    assert {"agents", "threads", "runs", "documents", "chunks"} <= created
    assert {"alembic_version_agents", "alembic_version_rag"} <= created
    await migrate_all(engine, settings)  # a second start changes nothing
    assert await tables(url) == created


MIGRATE_SCRIPT = """
import asyncio, sys
from amelia_common.db import create_engine
from amelia_common.settings import Settings
from tests.foundation.test_migrations import migrate_all

async def main() -> None:
    settings = Settings(_env_file=None, DATABASE_URL=sys.argv[1])
    engine = create_engine(settings)
    await migrate_all(engine, settings)
    await engine.dispose()

asyncio.run(main())
"""


async def test_replicas_starting_together_migrate_once(
    empty_database: tuple[str, AsyncEngine], settings: Settings
) -> None:
    url, engine = empty_database
    replicas = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", MIGRATE_SCRIPT, url, cwd=str(Path(__file__).parents[2])
        )
        for _ in range(2)
    ]
    # ...and two more in this process at the same time.
    await asyncio.gather(migrate_all(engine, settings), migrate_all(engine, settings))
    assert [await r.wait() for r in replicas] == [0, 0]
    conn = await asyncpg.connect(libpq_url(url))
    try:
        versions = await conn.fetch("SELECT version_num FROM alembic_version_agents")
        documents = await conn.fetchval("SELECT count(*) FROM documents")
    finally:
        await conn.close()
    assert len(versions) == 1 and documents == 0


async def test_a_database_a_newer_version_migrated_is_refused_saying_so_and_left_as_it_is(
    empty_database: tuple[str, AsyncEngine], settings: Settings
) -> None:
    """Going back to an older Amelia after an upgrade (QA s28): its start refuses the database
    in words a user can act on — not Alembic's bare "Can't locate revision" — and changes
    nothing in it."""
    url, engine = empty_database
    await migrate_all(engine, settings)
    conn = await asyncpg.connect(libpq_url(url))
    try:
        # What a newer release's migration leaves behind: a revision this code does not have.
        await conn.execute("UPDATE alembic_version_agents SET version_num = 'agents_9999'")
        before = await tables(url)
        with pytest.raises(RuntimeError) as refused:
            await migrate_all(engine, settings)
        message = str(refused.value)
        assert "alembic_version_agents is at revision agents_9999" in message
        assert "a newer Amelia migrated it" in message
        assert "does not migrate a database back" in message
        assert await tables(url) == before
        assert await conn.fetchval("SELECT version_num FROM alembic_version_agents") == (
            "agents_9999"
        )
    finally:
        await conn.close()
