"""`amelia up`: embedded infrastructure, then every service as a child process, watched.

Order matters both ways: PostgreSQL and NATS first, services after (each waits for its
dependencies anyway); on Ctrl-C or SIGTERM the services stop first (each drains its in-flight
calls), then NATS and PostgreSQL. A service that dies is restarted with backoff. The supervisor
writes `<data dir>/run/mesh.json` so `amelia status` and `amelia down` find what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from amelia_cli.health import Probe, probe_service
from amelia_cli.mesh import SERVICES, ServiceSpec, service_env
from amelia_common.embedded import Infrastructure, ensure_infrastructure, port_is_free
from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.up")

MAX_RESTARTS = 5


class MeshStartError(RuntimeError):
    """The mesh could not start; the message says what to do."""


def state_file(settings: Settings) -> Path:
    return settings.data_dir / "run" / "mesh.json"


def read_state(settings: Settings) -> dict[str, object] | None:
    """What a running `amelia up` wrote, if its process is still alive."""
    path = state_file(settings)
    try:
        state: dict[str, object] = json.loads(path.read_text())
        os.kill(int(str(state["pid"])), 0)
    except (OSError, ValueError, KeyError):
        return None
    return state


def check_ports(settings: Settings) -> None:
    """Fail fast, with the setting to change, when a service port is taken."""
    taken = [
        f"{spec.name} port {spec.port(settings)} (set {spec.port_setting})"
        for spec in SERVICES
        if spec.port(settings) and not port_is_free(spec.port(settings), settings.bind_host)
    ]
    if taken:
        raise MeshStartError(
            "ports already in use: "
            + "; ".join(taken)
            + ". Is another `amelia up` running? Try `amelia status` or `amelia down`."
        )


@dataclass
class Child:
    spec: ServiceSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    restarts: int = 0


class Supervisor:
    """Starts, watches and stops the mesh."""

    def __init__(self, settings: Settings, *, log_to_files: bool = True) -> None:
        self.settings = settings
        self.log_to_files = log_to_files
        self.infra: Infrastructure | None = None
        self.children: dict[str, Child] = {}
        self._stopping = False

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    def start_infrastructure(self) -> Settings:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        check_ports(self.settings)
        self.infra = ensure_infrastructure(self.settings)
        self.settings = self.infra.settings
        return self.settings

    def _spawn(self, spec: ServiceSpec) -> subprocess.Popen[bytes]:
        env = {**os.environ, **service_env(self.settings)}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out: int | object = subprocess.DEVNULL
        if self.log_to_files:
            out = open(self.log_dir / f"{spec.name}.log", "ab")  # noqa: SIM115 - owned by child
        return subprocess.Popen(
            spec.command(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT if self.log_to_files else None,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children in order
        )

    def start_services(self) -> None:
        for spec in SERVICES:
            self.children[spec.name] = Child(
                spec, self._spawn(spec), self.log_dir / f"{spec.name}.log"
            )
        self._write_state()

    def _write_state(self) -> None:
        path = state_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "database_url": self.settings.DATABASE_URL,
                    "nats_url": self.settings.NATS_URL,
                    "services": {n: c.process.pid for n, c in self.children.items()},
                },
                indent=2,
            )
        )

    async def wait_until_serving(self, timeout: float = 300.0) -> list[Probe]:
        """Poll every service's health until all are SERVING; fail if one exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            probes = [await probe_service(self.settings, c.spec) for c in self.children.values()]
            if all(p.ok for p in probes):
                return probes
            for child in self.children.values():
                code = child.process.poll()
                if code is not None:
                    raise MeshStartError(
                        f"{child.spec.name} exited with code {code} while starting; "
                        f"see {child.log_path}:\n{tail(child.log_path)}"
                    )
            if time.monotonic() > deadline:
                waiting = ", ".join(f"{p.name}={p.status}" for p in probes if not p.ok)
                raise MeshStartError(f"services not SERVING after {timeout:.0f}s: {waiting}")
            await asyncio.sleep(0.5)

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart a child that dies (with backoff) until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if stop.is_set():
                break
            for child in self.children.values():
                code = child.process.poll()
                if code is None:
                    continue
                if child.restarts >= MAX_RESTARTS:
                    log.error("service keeps dying; giving up", service=child.spec.name)
                    stop.set()
                    break
                delay = min(2**child.restarts, 30)
                log.warning(
                    "service exited; restarting",
                    service=child.spec.name,
                    code=code,
                    restart_in=delay,
                    log=str(child.log_path),
                )
                await asyncio.sleep(delay)
                child.restarts += 1
                child.process = self._spawn(child.spec)
            self._write_state()

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM every service, wait for them to drain, then stop NATS and PostgreSQL."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.GRPC_SHUTDOWN_GRACE_SECONDS + 5 if grace is None else grace
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children.values():
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service did not stop in time; killing", service=child.spec.name)
                child.process.kill()
                child.process.wait()
        if self.infra is not None:
            self.infra.stop()
        with contextlib.suppress(OSError):
            state_file(self.settings).unlink()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
