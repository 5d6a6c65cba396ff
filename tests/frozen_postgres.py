"""A PostgreSQL frozen with SIGSTOP, as a stalled host or a stopped container leaves it: its
connections stay up, it accepts new ones into the listen queue, and it answers nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psutil

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
