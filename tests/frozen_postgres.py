"""A PostgreSQL of a test's own (`own_postgres_server`), and frozen with SIGSTOP (`frozen`), as
a stalled host or a paused container leaves it: its connections stay up, it accepts new ones
into the listen queue, and it answers nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from amelia_common.embedded import EmbeddedPostgres


@contextlib.contextmanager
def frozen(postgres: EmbeddedPostgres) -> Iterator[None]:
    """SIGSTOP the postmaster first (it forks no server process after that), then every server
    process under it; SIGCONT all of them at the end, whatever happened meanwhile."""
    pid = postgres.pid()
    assert pid is not None, "PostgreSQL is not running"
    postmaster = psutil.Process(pid)
    postmaster.suspend()
    servers = postmaster.children(recursive=True)
    for server in servers:
        with contextlib.suppress(psutil.NoSuchProcess):
            server.suspend()
    try:
        yield
    finally:
        for process in [*servers, postmaster]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


@pytest.fixture
async def own_postgres_server(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """An embedded PostgreSQL under `tmp_path` and its URL, stopped at the end."""
    server = EmbeddedPostgres(tmp_path / "pg")
    url = await asyncio.to_thread(server.start)
    try:
        yield server, url
    finally:
        await asyncio.to_thread(server.stop)
