"""Embedded PostgreSQL and NATS: real servers, data that survives a restart, clear port errors."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import nats
import pytest

from amelia_common.db import libpq_url
from amelia_common.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedStartError,
    Infrastructure,
    _again_if_it_crashed,
    ensure_infrastructure,
    free_port,
    process_alive,
)
from amelia_common.settings import Settings


async def test_postgres_has_pgvector_and_nats_has_jetstream(settings: Settings) -> None:
    conn = await asyncpg.connect(libpq_url(settings.DATABASE_URL))
    try:
        distance = await conn.fetchval("SELECT '[1,0]'::vector <=> '[0,1]'::vector")
    finally:
        await conn.close()
    assert distance == pytest.approx(1.0)
    nc = await nats.connect(settings.NATS_URL)
    try:
        info = await nc.jetstream().account_info()
    finally:
        await nc.close()
    assert info.limits is not None


async def test_jetstream_data_survives_a_nats_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, free_port())
    url = server.start()
    try:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        await js.publish("keep.a", b"hello")
        await nc.close()
        server.stop()
        server.start()
        nc = await nats.connect(url)
        msg = await nc.jetstream().get_msg("KEEP", 1)
        await nc.close()
        assert msg.data == b"hello"
    finally:
        server.stop()


def test_a_taken_nats_port_is_reported_not_retried(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(EmbeddedStartError, match=f"port {port} is in use.*NATS_URL"):
            EmbeddedNats(tmp_path, port).start(timeout=5)


def test_external_urls_start_nothing(settings: Settings) -> None:
    infra = ensure_infrastructure(settings)
    assert infra.postgres is None and infra.nats is None
    assert infra.settings.DATABASE_URL == settings.DATABASE_URL


def test_a_killed_nats_starts_again_on_its_store_and_port_in_its_own_session(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path, free_port())
    url = server.start()
    try:
        first = server.pid()
        assert first is not None and os.getsid(first) != os.getsid(0)  # Ctrl-C won't reach it
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: server.pid() is None, "nats-server gone")
        assert server.start() == url
        second = server.pid()
        assert second not in (None, first) and os.getsid(second) == second
    finally:
        server.stop()


def test_stop_stops_the_server_on_the_data_whoever_started_it(tmp_path: Path) -> None:
    """`amelia up` stops what runs on its data dir, even a server it found or that was
    restarted by someone else; a service started alone leaves a server it found alone."""
    port = free_port()
    starter = EmbeddedNats(tmp_path, port)
    starter.start()
    try:
        finder = EmbeddedNats(tmp_path, port)
        finder.start()  # reused
        assert finder.pid() == starter.pid() and not finder.started_here
        lone_service = Infrastructure(Settings(_env_file=None), nats=finder)  # type: ignore[call-arg]
        lone_service.stop()
        assert finder.pid() is not None
        pid = finder.pid()
        finder.stop()
        assert pid is not None and not process_alive(pid) and starter.pid() is None
    finally:
        starter.stop()


async def test_a_killed_postgres_starts_again_on_its_data_with_the_same_url(
    tmp_path: Path,
) -> None:
    """Killed with SIGKILL, the postmaster may linger as a zombie that its lock files still
    name; `start()` brings it back anyway, with the data and the URL it had."""
    server = EmbeddedPostgres(tmp_path)
    url = server.start()
    try:
        conn = await asyncpg.connect(libpq_url(url))
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
        await conn.close()
        first = server.pid()
        assert first is not None and os.getsid(first) != os.getsid(0)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: server.pid() is None, "postmaster gone")
        assert await asyncio.to_thread(server.start) == url
        assert server.pid() not in (None, first)
        conn = await asyncpg.connect(libpq_url(url))
        assert await conn.fetchval("SELECT v FROM kept") == "still here"
        await conn.close()
        other_handle = EmbeddedPostgres(tmp_path)
        other_handle.stop()
        assert server.pid() is None
    finally:
        server.stop()


def test_a_socket_lock_outliving_its_postmaster_does_not_stop_a_start(tmp_path: Path) -> None:
    """A socket lock can outlive postmaster.pid (seen on a restart right after a stop, at load
    ~10). One naming a process that is gone — here a zombie, which PostgreSQL's own check
    (`kill(pid, 0)`) takes for a running postmaster — is removed at start."""
    server = EmbeddedPostgres(tmp_path)
    server.start()
    # A zombie of the user PostgreSQL runs as (pgserver when we are root): one it may signal.
    zombie = subprocess.Popen(["true"], user=server.pgdata.stat().st_uid)
    try:
        lines = server.pid_file.read_text().splitlines()
        lock = Path(lines[4]) / f".s.PGSQL.{lines[3]}.lock"
        server.stop()
        wait_until(lambda: not process_alive(zombie.pid), "a zombie child")
        lock.write_text(f"{zombie.pid}\n{server.pgdata}\n")
        assert not server.pid_file.exists()
        server.start()
        assert server.pid() is not None
    finally:
        server.stop()
        zombie.wait()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_postgres_program_that_crashes_is_run_once_more(tmp_path: Path) -> None:
    """pg_ctl and initdb have died with SIGSEGV in CI (rarely): a step whose program dies by a
    signal is tried once more; a program that fails on its own (an exit status) is not."""
    tries = tmp_path / "tries"

    def crash_first() -> None:
        first = not tries.exists()
        tries.touch()
        script = "kill -SEGV $$" if first else "exit 0"
        subprocess.run(["sh", "-c", script], check=True)

    _again_if_it_crashed(crash_first)
    assert tries.exists()

    def fails() -> None:
        subprocess.run(["sh", "-c", "exit 3"], check=True)

    with pytest.raises(subprocess.CalledProcessError):
        _again_if_it_crashed(fails)
