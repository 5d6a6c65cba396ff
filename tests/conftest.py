"""Session-wide real infrastructure: one embedded PostgreSQL (pgvector) and one nats-server.

Started once per test session under a temporary data directory on free ports, or taken from
`DATABASE_URL` / `NATS_URL` when those are set in the environment. Every test gets `settings`
pointing at them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from amelia_common.db import libpq_url
from amelia_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from amelia_common.settings import Environment, Settings

if TYPE_CHECKING:
    from amelia_events.server import EventsService


class Infra:
    """The session's servers; `nats` can be stopped and started again by restart tests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres: EmbeddedPostgres | None = None
        self.nats: EmbeddedNats | None = None
        self.database_url = os.environ.get("DATABASE_URL", "")
        self.nats_url = os.environ.get("NATS_URL", "")

    def start(self) -> None:
        if not self.database_url:
            self.postgres = EmbeddedPostgres(self.root)
            self.database_url = self.postgres.start()
        if not self.nats_url:
            self.nats = EmbeddedNats(self.root, free_port())
            self.nats_url = self.nats.start()

    def stop(self) -> None:
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "ENVIRONMENT": Environment.TESTING,
            "DATABASE_URL": self.database_url,
            "NATS_URL": self.nats_url,
            "AMELIA_DATA_DIR": self.root / "data",
            "LOG_LEVEL": "WARNING",
            "EVENTS_GRPC_PORT": 0,
            "AGENTS_GRPC_PORT": 0,
            "RAG_GRPC_PORT": 0,
            "PORT": 0,
            "GRPC_SHUTDOWN_GRACE_SECONDS": 2.0,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    @asynccontextmanager
    async def scratch_database(self, prefix: str) -> AsyncIterator[str]:
        """A new, empty database on the session's server, dropped afterwards: its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(libpq_url(self.database_url))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            url = make_url(self.database_url).set(database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """Outside pytest's own temporary root: run as root, the embedded PostgreSQL runs as another
    user, which must traverse the path to its data, and every pytest session that starts makes
    `/tmp/pytest-of-<user>` private (0700) again. Short, for Unix socket paths (~100 bytes)."""
    root = Path(tempfile.mkdtemp(prefix=f"infra-{tmp_path_factory.getbasetemp().name}-"))
    infra = Infra(root)
    try:
        infra.start()
        yield infra
    finally:
        infra.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def settings(infra: Infra) -> Settings:
    return infra.settings()


@pytest.fixture(scope="session")
async def events_service(infra: Infra) -> AsyncIterator[EventsService]:
    """One events service in process (port 0) on the session's servers, for the folders that
    need one with the default settings (agents, workflows, llm, gateway): started once."""
    from amelia_events.server import build_service

    service = await build_service(infra.settings())
    await service.start()
    yield service
    await service.stop(grace=1.0)


@pytest.fixture(scope="session")
def events_address(events_service: EventsService) -> str:
    return f"127.0.0.1:{events_service.bound_port}"
