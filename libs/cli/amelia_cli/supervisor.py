"""`amelia up`: embedded PostgreSQL, NATS and the local model, then every service as a child
process, supervised.

With `cluster` (`amelia up --cluster N`) NATS is N clustered nats-servers on loopback
(`amelia_common.nats_cluster`, under `<data dir>/nats-cluster`, the one `amelia cluster` runs),
each node a unit of its own, and the services keep their streams on min(3, N) of them.

Several meshes (or other processes) on one host would share the default metrics ports, and only
the first process to bind one serves it: each service is given its configured metrics port when
it is free, another free one otherwise (logged, and kept in mesh.json for `amelia status`).

Order matters both ways: PostgreSQL and NATS first, services after (each waits for its
dependencies anyway); the local model server (llama.cpp, when the default model is a `local:`
one: see `llama_server.embedded_wanted`) loads its model meanwhile, in parallel, since no service
needs it to start. On Ctrl-C or SIGTERM the services stop first (each drains its in-flight
calls), then the local model, then NATS, then PostgreSQL. Every child runs in its own session, so
a terminal's Ctrl-C reaches only `amelia up`, which stops them in that order.

Every part of the mesh, the embedded servers included, is a *unit* restarted when it dies, the
way systemd (`Restart=on-failure`, `StartLimitBurst`/`StartLimitIntervalSec`) and supervisord
(`autorestart`, `startretries`) do it: each restart waits a little longer than the one before;
a unit that crashes `burst` times within `window` seconds is given up on and reported FAILED
(with its last exit and its log) while the rest of the mesh keeps running; crashes older than
the window are forgotten, so healthy uptime earns the restarts back. A service that exits
cleanly (exit 0, or by the SIGTERM/SIGINT someone sent it: it drained and stopped, as systemd
counts it) has stopped, not crashed: it is started again at once and no crash is counted. The
supervisor's own stop (Ctrl-C, `amelia down`) starts nothing again. The supervisor writes
`<data dir>/run/mesh.json` (atomically) so `amelia status` and `amelia down` find what it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from amelia_cli.health import Probe, probe_service
from amelia_cli.located import given_up
from amelia_cli.mesh import SERVICES, ServiceSpec, client_host, service_env
from amelia_common.connections import MESH_REPLICAS_AT_MOST
from amelia_common.embedded import (
    EmbeddedStartError,
    ensure_infrastructure,
    free_port,
    log_tail,
    port_is_free,
)
from amelia_common.llama_server import EmbeddedLlama, why_not_embedded
from amelia_common.local_model import LocalModelError
from amelia_common.logging import get_logger
from amelia_common.nats_cluster import NatsCluster
from amelia_common.running_mesh import (
    STREAM_REPLICAS,
    metrics_port_or_free,
    read_state,
    state_file,
)
from amelia_common.settings import Settings

log = get_logger("amelia.up")

TICK_SECONDS = 0.5

# How a process that stopped (rather than crashed) ends: exit 0, or the signal asking it to
# stop, by which a drained process re-raises it (uvicorn does) or dies with Python's default
# handler; the shell's 128+N spelling of the same.
CLEAN_EXITS = frozenset(
    {0}
    | {-sig for sig in (signal.SIGTERM, signal.SIGINT)}
    | {128 + sig for sig in (signal.SIGTERM, signal.SIGINT)}
)

# A part that stops cleanly this many times more often than `RestartPolicy.burst` within the
# window is not being stopped by someone: it exits by itself, and restarting it at once would
# spin (systemd's StartLimitBurst counts every start, clean or not).
CLEAN_STOPS_BURST = 4
# The most of a crashed service's last log line kept in its `last_exit` (`amelia status`).
CRASH_REASON_CHARS = 240


class MeshStartError(RuntimeError):
    """The mesh could not start; the message says what to do."""


class UnitState(StrEnum):
    """Where a unit is in its life, as `amelia status` and mesh.json report it."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"  # crashed; waiting out its backoff
    FAILED = "FAILED"  # crashed too often; given up on
    STOPPED = "STOPPED"


@dataclass(frozen=True)
class RestartPolicy:
    """Give up on a unit after `burst` crashes within `window` seconds (systemd's
    StartLimitBurst / StartLimitIntervalSec); before that, wait `first_delay` after a crash,
    doubling with each crash still in the window, at most `max_delay`."""

    burst: int = 5
    window: float = 60.0
    first_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, crashes_in_window: int) -> float | None:
        """Seconds to wait before the next start, or None to give up."""
        if crashes_in_window >= self.burst:
            return None
        return min(self.first_delay * 2 ** max(crashes_in_window - 1, 0), self.max_delay)


class Server(Protocol):
    """An embedded server (`EmbeddedPostgres`, `EmbeddedNats`, `EmbeddedLlama`), known by its
    data directory."""

    @property
    def log_file(self) -> Path: ...
    def pid(self) -> int | None: ...
    def start(self) -> str: ...
    def stop(self) -> None: ...


@dataclass(eq=False)
class Unit(ABC):
    """One supervised part of the mesh: its process, its state and its recent crashes."""

    name: str
    log_path: Path
    state: UnitState = UnitState.STARTING
    restarts: int = 0
    last_exit: str = ""
    crashes: deque[float] = field(default_factory=deque)
    stops: deque[float] = field(default_factory=deque)  # its clean stops (`CLEAN_STOPS_BURST`)
    restart_at: float = 0.0

    @abstractmethod
    def pid(self) -> int | None:
        """The pid of its process while it runs."""

    @abstractmethod
    def exited(self) -> str | None:
        """None while it runs; else how it ended ("exit code 1", "killed by SIGKILL")."""

    @abstractmethod
    async def launch(self) -> None:
        """Start it (again); raises when it cannot."""

    def stopped_cleanly(self) -> bool:
        """Whether its process, now gone, ended as a stop rather than a crash (only a child
        the supervisor started can tell)."""
        return False

    def crash_reason(self) -> str:
        """What its process said last before it crashed ("" when nothing says)."""
        return ""

    def forget_crashes_before(self, moment: float) -> None:
        while self.crashes and self.crashes[0] <= moment:
            self.crashes.popleft()
        while self.stops and self.stops[0] <= moment:
            self.stops.popleft()

    def report(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "pid": self.pid(),
            "restarts": self.restarts,
            "crashes_in_window": len(self.crashes),
            "last_exit": self.last_exit,
            "log": str(self.log_path),
        }


@dataclass(eq=False)
class ServiceUnit(Unit):
    """A service of the mesh, run as `python -m <module>` with its output in its log."""

    spec: ServiceSpec | None = None
    env: dict[str, str] = field(default_factory=dict)
    log_to_file: bool = True
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0  # its Prometheus endpoint (0: none of its own, or off)
    address: str = ""  # host:port it serves on (a replica's own; "": the spec's port)

    def report(self) -> dict[str, Any]:
        return {**super().report(), "metrics_port": self.metrics_port, "address": self.address}

    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def exited(self) -> str | None:
        code = self.process.poll() if self.process else None
        if code is None:
            return None
        if code < 0:
            how = "stopped" if code in CLEAN_EXITS else "killed"
            return f"{how} by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def stopped_cleanly(self) -> bool:
        code = self.process.poll() if self.process else None
        return code in CLEAN_EXITS

    def crash_reason(self) -> str:
        """The last line of its log: a service failing at start ends there with the error
        (e.g. a database a newer Amelia migrated), which `amelia status` then shows beside
        "exit code 1" instead of only the log's path (QA s28). Not for a process killed by a
        signal: its last line says nothing about why."""
        code = self.process.poll() if self.process else None
        if code is None or code <= 0:
            return ""
        last = next(
            (line for line in reversed(log_tail(self.log_path, 5).splitlines()) if line.strip()), ""
        )
        return last.strip()[:CRASH_REASON_CHARS]

    async def launch(self) -> None:
        await asyncio.to_thread(self._spawn)

    def _spawn(self) -> None:
        assert self.spec is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out: Any = subprocess.DEVNULL
        if self.log_to_file:
            out = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        try:
            self.process = subprocess.Popen(
                self.spec.command(),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if self.log_to_file else None,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops it in order
            )
        finally:
            if self.log_to_file:
                out.close()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()


@dataclass(eq=False)
class ServerUnit(Unit):
    """An embedded server: started (or found running) on its data directory and port."""

    server: Server | None = None

    def pid(self) -> int | None:
        return self.server.pid() if self.server else None

    def exited(self) -> str | None:
        return None if self.pid() is not None else "the server process is gone"

    async def launch(self) -> None:
        assert self.server is not None
        await asyncio.to_thread(self.server.start)

    async def stop(self) -> None:
        assert self.server is not None
        await asyncio.to_thread(self.server.stop)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` so a reader sees the old content or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def metrics_ports(settings: Settings, specs: Sequence[ServiceSpec]) -> dict[str, int]:
    """Each service's metrics port: its setting's when free, else a free one (another mesh or
    process on this host holds it, and a port held elsewhere would leave this process without
    metrics); 0 stays off."""
    chosen: dict[str, int] = {}
    for spec in specs:
        if not spec.metrics_setting:
            continue
        wanted: int = getattr(settings, spec.metrics_setting)
        taken = frozenset(chosen.values())
        chosen[spec.name] = metrics_port_or_free(
            wanted, settings.bind_host, spec.metrics_setting, taken
        )
    return chosen


# One limit for `--replicas` and the embedded PostgreSQL's connections sized for it.
MAX_REPLICAS = MESH_REPLICAS_AT_MOST


def replica_ports(first: int, count: int, taken: set[int], host: str) -> list[int]:
    """`count` ports for the replicas of a service: its own, then the next free ones after it
    (skipping `taken`, the ports the rest of the mesh listens on), so that `amelia status`
    reads events on 50051, 50054, … rather than on ports drawn at random."""
    ports = [first]
    candidate = first
    while len(ports) < count:
        candidate += 1
        if candidate > 65535:
            raise MeshStartError(f"no free port after {first} for {count} replicas")
        if candidate not in taken and port_is_free(candidate, host):
            ports.append(candidate)
            taken.add(candidate)
    return ports


def check_ports(settings: Settings, local_model: EmbeddedLlama | None = None) -> None:
    """Fail fast, with the setting to change, when a port the mesh listens on is taken (the
    local model's too, unless its own server from an earlier run is there to be reused)."""
    wanted = [
        (spec.name, spec.port(settings), spec.port_setting, settings.bind_host) for spec in SERVICES
    ]
    if local_model is not None and local_model.pid() is None:
        wanted.append(("local-model", local_model.port, "LOCAL_MODEL_PORT", "127.0.0.1"))
    taken = [
        f"{name} port {port} (set {setting})"
        for name, port, setting, host in wanted
        if port and not port_is_free(port, host)
    ]
    if taken:
        raise MeshStartError(
            "ports already in use: "
            + "; ".join(taken)
            + ". Is another `amelia up` running? Try `amelia status` or `amelia down`."
        )


# Sent by a second `amelia up` to the running one: start again what you gave up on.
REVIVE_SIGNAL = signal.SIGUSR1


def revive_running(data_dir: Path) -> list[str] | None:
    """Ask the `amelia up` running for `data_dir` to start again the parts it gave up on: their
    names (empty: none given up on); None when it cannot be asked (it does not handle the
    signal: an older one)."""
    state = read_state(data_dir)
    failed = given_up(state)
    if not state or not failed:
        return []
    if state.get("revive_signal") != REVIVE_SIGNAL.name:
        return None
    os.kill(int(state["pid"]), REVIVE_SIGNAL)
    return sorted(failed)


class AlreadyRunningError(MeshStartError):
    """Another `amelia up` runs the mesh of this data directory."""


def refuse_if_running(data_dir: Path) -> None:
    """Raise, naming the running `amelia up` (its pid), if one holds `data_dir`; touch nothing
    of it."""
    state = read_state(data_dir)
    if state and int(state["pid"]) != os.getpid():
        raise AlreadyRunningError(
            f"amelia is already running here (pid {state['pid']}, data {data_dir}); "
            "`amelia status` shows it, `amelia down` stops it."
        )


def _streams_in(root: Path, pattern: str) -> list[str]:
    """The JetStream streams stored under `root` (their folders' names)."""
    return sorted({p.name for p in root.glob(pattern) if p.is_dir()})


def event_log_switch_warning(settings: Settings, cluster: int) -> str | None:
    """What `amelia up` should say when the event log it is about to use is not the one this
    data directory's earlier runs wrote: one nats-server keeps its store in `<data>/nats`,
    `--cluster N` in `<data>/nats-cluster`, and neither reads the other, so switching would
    show the old runs without their events, silently."""
    if settings.NATS_URL:
        return None  # an outside NATS: its log is the same whatever `up` is given
    single = settings.data_dir / "nats"
    clustered = settings.data_dir / "nats-cluster"
    if cluster:
        unused, used, how = single, clustered, "without --cluster"
        streams = _streams_in(single, "jetstream/*/streams/*")
    else:
        unused, used, how = clustered, single, f"with --cluster {_cluster_size(clustered)}"
        streams = _streams_in(clustered, "*/jetstream/jetstream/*/streams/*")
    if settings.EVENTS_STREAM not in streams:
        return None
    return (
        f"the event log of the runs started here {how} is in {unused}, which this mesh does "
        f"not read (it uses {used}): their events will not show in `amelia runs show` or "
        f"`amelia events`. Start it {how} to see them (docs/scale-out.md)."
    )


def _cluster_size(root: Path) -> str:
    """How many nodes the cluster kept under `root` had ("N" when it cannot tell)."""
    kept = NatsCluster.load(root)
    return str(len(kept.nodes)) if kept is not None else "N"


class Supervisor:
    """Starts, watches (restarting what dies) and stops the mesh."""

    def __init__(
        self,
        settings: Settings,
        *,
        log_to_files: bool = True,
        services: Sequence[ServiceSpec] = SERVICES,
        policy: RestartPolicy | None = None,
        cluster: int = 0,
        replicas: int = 1,
    ) -> None:
        """`cluster`: run NATS as that many clustered nodes (0: one embedded nats-server);
        `replicas`: processes of each scalable service (events, rag, agents; the gateway is
        the one HTTP port users open, so one)."""
        if not 1 <= replicas <= MAX_REPLICAS:
            raise MeshStartError(f"--replicas takes 1 to {MAX_REPLICAS}")
        if cluster and settings.NATS_URL:
            raise MeshStartError(
                "NATS_URL is set: the mesh uses that NATS; unset it to run a cluster here "
                "(amelia up --cluster)"
            )
        if not 0 <= cluster <= 5:
            raise MeshStartError("--cluster takes 1 to 5 NATS nodes")
        self.settings = settings
        self.cluster_size = cluster
        self.replicas = replicas
        # Every replica's host:port by `*_ADDRESS`, what each client is given (mesh.json too).
        self.addresses: dict[str, list[str]] = {}
        self.nats_cluster: NatsCluster | None = None
        self.log_to_files = log_to_files
        self.specs = tuple(services)
        self.policy = policy or RestartPolicy()
        # In start order, PostgreSQL, NATS, the local model: stopped in reverse.
        self.servers: list[ServerUnit] = []
        self.services: dict[str, ServiceUnit] = {}
        # Why no local model server runs ("" when one does), and where the services find it.
        self.local_model_off = why_not_embedded(settings)
        self.local_model_url = settings.local_model_url if settings.LOCAL_MODEL_URL else ""
        self._launches: set[asyncio.Task[None]] = set()
        self._written = ""
        self._stopping = False
        self._hurry = False
        # The signal a second `amelia up` sends this one to start again what it gave up on
        # ("" until a handler for it is installed: `revive_on`).
        self.revive_signal = ""

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    @property
    def units(self) -> list[Unit]:
        return [*self.servers, *self.services.values()]

    # -- starting ------------------------------------------------------------------------------

    async def start_infrastructure(self) -> Settings:
        """Embedded PostgreSQL and NATS for whichever URL is empty, and the local model server
        when the default model is local (it goes on loading in the background: see
        `wait_until_serving`); returns settings using them."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        refuse_if_running(self.settings.data_dir)
        llama = self._local_model_server()
        check_ports(self.settings, llama)
        local_model = None
        if llama is not None:
            local_model = ServerUnit("local-model", llama.log_file, server=llama)
            self.local_model_url = llama.base_url
            self._track(asyncio.create_task(self._first_start(local_model)))
        try:
            infra = await asyncio.to_thread(
                ensure_infrastructure, self.settings, nats=not self.cluster_size
            )
            self.settings = infra.settings
            for name, server in (("postgres", infra.postgres), ("nats", infra.nats)):
                if server is not None:
                    unit = ServerUnit(name, server.log_file, UnitState.RUNNING, server=server)
                    self.servers.append(unit)
            if self.cluster_size:
                await self._start_nats_cluster()
        finally:
            if local_model is not None:
                self.servers.append(local_model)  # stopped before NATS, even if that failed
            self.write_state()
        return self.settings

    async def _start_nats_cluster(self) -> None:
        """The NATS cluster's nodes (each a unit, restarted when it dies); the services' settings
        name every node and keep the streams on min(3, N) of them."""
        root = self.settings.data_dir / "nats-cluster"
        try:
            cluster = NatsCluster.at(root, self.cluster_size, self.settings.EMBEDDED_NATS_PORT)
        except EmbeddedStartError as exc:
            raise MeshStartError(str(exc)) from exc
        self.nats_cluster = cluster
        url = await asyncio.to_thread(cluster.start)
        for node in cluster.nodes:
            self.servers.append(
                ServerUnit(f"nats-{node.name}", node.log_file, UnitState.RUNNING, server=node)
            )
        self.settings = self.settings.model_copy(
            update={
                "NATS_URL": url,
                "EVENTS_STREAM_REPLICAS": cluster.stream_replicas,
                "RUNS_QUEUE_REPLICAS": cluster.stream_replicas,
            }
        )

    def _local_model_server(self) -> EmbeddedLlama | None:
        """The local model server to run, if the settings want one; its model must be there."""
        if self.local_model_off:
            return None
        try:
            return EmbeddedLlama.from_settings(self.settings)
        except LocalModelError as exc:
            raise MeshStartError(str(exc)) from exc

    async def _first_start(self, unit: ServerUnit) -> None:
        """Start `unit` while the rest of the mesh starts; a failure is kept in its state (FAILED,
        with why), which `wait_until_serving` reports."""
        started = time.monotonic()
        try:
            await unit.launch()
        except Exception as exc:  # noqa: BLE001 - reported by wait_until_serving
            unit.state = UnitState.FAILED
            unit.last_exit = f"could not start: {exc}"
        else:
            unit.state = UnitState.RUNNING
            seconds = round(time.monotonic() - started, 1)
            log.info("started", unit=unit.name, pid=unit.pid(), seconds=seconds)
        self.write_state()

    def _track(self, task: asyncio.Task[None]) -> None:
        """Keep a start in flight, so that `stop` waits for it and stops what it started."""
        self._launches.add(task)
        task.add_done_callback(self._launches.discard)

    async def start_services(self) -> None:
        """Every service, `replicas` processes of each scalable one, each on a port and a
        metrics port of its own; every client is given the comma list of a service's
        replicas (gRPC balances over them, round_robin)."""
        host = client_host(self.settings)
        metrics = metrics_ports(self.settings, self.specs)
        taken = {spec.port(self.settings) for spec in SERVICES} | set(metrics.values())
        ports: dict[str, list[int]] = {}
        for spec in self.specs:
            count = self.replicas if spec.scalable else 1
            ports[spec.name] = replica_ports(
                spec.port(self.settings), count, taken, self.settings.bind_host
            )
            if spec.scalable:
                self.addresses[spec.address_setting] = [f"{host}:{p}" for p in ports[spec.name]]
        listed = {setting: ",".join(found) for setting, found in self.addresses.items()}
        env = {**os.environ, **service_env(self.settings, listed)}
        for spec in self.specs:
            for index, port in enumerate(ports[spec.name]):
                name = spec.name if index == 0 else f"{spec.name}-{index + 1}"
                metrics_port = metrics.get(spec.name, 0)
                if index and metrics_port:
                    metrics_port = free_port()  # two processes cannot share one
                own = {spec.port_setting: str(port)}
                if spec.metrics_setting:
                    own[spec.metrics_setting] = str(metrics_port)
                unit = ServiceUnit(
                    name,
                    self.log_dir / f"{name}.log",
                    spec=spec,
                    env={**env, **own},
                    log_to_file=self.log_to_files,
                    metrics_port=metrics_port,
                    address=f"{host}:{port}",
                )
                await unit.launch()
                unit.state = UnitState.RUNNING
                self.services[name] = unit
        self.write_state()

    async def wait_until_serving(self, timeout: float = 300.0) -> list[Probe]:
        """Poll every service's health until all are SERVING and the local model is loaded. A
        service that exits, or a server that cannot start, before then stops the start (a wrong
        setting is reported now, not after five restarts); an embedded server that dies is
        restarted meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            units = list(self.services.values())
            probes = [
                await probe_service(self.settings, u.spec, u.address) for u in units if u.spec
            ]
            starting = [s for s in self.servers if s.state == UnitState.STARTING]
            if all(p.ok for p in probes) and not starting:
                return probes
            for unit in units:
                why = unit.exited()
                if why is not None:
                    raise MeshStartError(
                        f"{unit.name} stopped while starting ({why}); "
                        f"see {unit.log_path}:\n{log_tail(unit.log_path, 15)}"
                    )
            for server in self.servers:
                if server.state == UnitState.FAILED:
                    raise MeshStartError(f"{server.name}: {server.last_exit}")
            self.check(self.servers)
            if time.monotonic() > deadline:
                waiting = [f"{p.name}={p.status}" for p in probes if not p.ok]
                waiting += [f"{s.name}={s.state}" for s in starting]
                raise MeshStartError(f"not SERVING after {timeout:.0f}s: {', '.join(waiting)}")
            await asyncio.sleep(TICK_SECONDS)

    # -- watching ------------------------------------------------------------------------------

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart what dies (with backoff) until `stop` is set; never blocks on one unit."""
        while not stop.is_set():
            self.check(self.units)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_SECONDS):
                    await stop.wait()

    def check(self, units: Sequence[Unit]) -> None:
        """One look at `units`: note the ones that died, start the ones whose wait is over."""
        now = time.monotonic()
        for unit in units:
            unit.forget_crashes_before(now - self.policy.window)
            if unit.state == UnitState.RUNNING:
                why = unit.exited()
                if why is not None and unit.stopped_cleanly():
                    self._stopped(unit, why, now)
                elif why is not None:
                    reason = unit.crash_reason()
                    self._crashed(unit, f"{why}: {reason}" if reason else why, now)
            elif unit.state == UnitState.RESTARTING and now >= unit.restart_at:
                unit.state = UnitState.STARTING
                self._track(asyncio.create_task(self._relaunch(unit)))
        self.write_state()

    def _crashed(self, unit: Unit, why: str, now: float) -> None:
        unit.last_exit = why
        unit.crashes.append(now)
        unit.forget_crashes_before(now - self.policy.window)
        delay = self.policy.delay(len(unit.crashes))
        if delay is None:
            unit.state = UnitState.FAILED
            log.error(
                "giving up: it keeps crashing; the rest of the mesh keeps running",
                unit=unit.name,
                last_exit=why,
                crashes=len(unit.crashes),
                window_seconds=self.policy.window,
                log=str(unit.log_path),
            )
            return
        unit.state = UnitState.RESTARTING
        unit.restart_at = now + delay
        log.warning(
            "stopped; restarting", unit=unit.name, why=why, restart_in=delay, log=str(unit.log_path)
        )

    def _stopped(self, unit: Unit, why: str, now: float) -> None:
        """`unit` stopped cleanly (someone else asked it to): start it again now, no crash
        counted, no backoff — unless it keeps stopping by itself (burst × `CLEAN_STOPS_BURST` times within
        the window): then it is crashing, and backs off like a crash."""
        unit.stops.append(now)
        if len(unit.stops) >= self.policy.burst * CLEAN_STOPS_BURST:
            self._crashed(unit, f"{why}, {len(unit.stops)} times within the window", now)
            return
        unit.last_exit = f"{why} (a clean stop, not a crash)"
        unit.state = UnitState.STARTING
        log.warning("stopped cleanly; starting it again", unit=unit.name, why=why)
        self._track(asyncio.create_task(self._relaunch(unit)))

    async def _relaunch(self, unit: Unit) -> None:
        if self._stopping:
            return
        try:
            await unit.launch()
        except Exception as exc:  # noqa: BLE001 - a failed start counts as a crash
            self._crashed(unit, f"could not start: {exc}", time.monotonic())
            return
        unit.restarts += 1
        unit.state = UnitState.RUNNING
        log.info("restarted", unit=unit.name, pid=unit.pid(), restarts=unit.restarts)
        self.write_state()

    def revive(self) -> list[str]:
        """Start again every unit given up on (FAILED), its crashes forgotten, as a second
        `amelia up` asks (`REVIVE_SIGNAL`); the names of those."""
        revived = []
        for unit in self.units:
            if unit.state == UnitState.FAILED and not self._stopping:
                unit.crashes.clear()
                unit.stops.clear()
                unit.state = UnitState.RESTARTING
                unit.restart_at = 0.0
                revived.append(unit.name)
        if revived:
            log.warning("starting again what was given up on, as asked", units=revived)
            self.check(self.units)
        return revived

    def revive_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """`revive` when this process gets `REVIVE_SIGNAL`; said in mesh.json, so a second
        `amelia up` sends it only to a supervisor that handles it (to one that does not, the
        signal's default would end it)."""
        loop.add_signal_handler(REVIVE_SIGNAL, self.revive)
        self.revive_signal = REVIVE_SIGNAL.name  # in mesh.json from its next writing

    def report(self) -> dict[str, dict[str, Any]]:
        """How each unit is, by name (the `units` of mesh.json)."""
        return {unit.name: unit.report() for unit in self.units}

    def state(self) -> dict[str, Any]:
        """What `run/mesh.json` holds: the supervisor's pid, where the mesh's parts are, and
        how each is."""
        return {
            "pid": os.getpid(),
            "data_dir": str(self.settings.data_dir),
            "database_url": self.settings.DATABASE_URL,
            "nats_url": self.settings.NATS_URL,
            # Copies of each stream: what a worker joining this mesh keeps (running_mesh).
            "stream_replicas": {name: getattr(self.settings, name) for name in STREAM_REPLICAS},
            # The NATS cluster's folder (`NatsCluster.load`), when up runs one.
            "nats_cluster": str(self.nats_cluster.root) if self.nats_cluster else "",
            # The local model server the services use ("" when none; `off` says why).
            "local_model": {
                "url": self.local_model_url,
                "embedded": not self.local_model_off,
                "off": "" if self.local_model_url else self.local_model_off,
            },
            # Where each service listens: how every `amelia` command finds this mesh.
            "ports": {spec.port_setting: spec.port(self.settings) for spec in SERVICES},
            # Every replica of each scalable service, by the setting its clients read.
            "addresses": self.addresses,
            # pid of each service's latest process (kept while it restarts)
            "services": {
                name: unit.process.pid for name, unit in self.services.items() if unit.process
            },
            "units": self.report(),
            # What starts again the units given up on (`amelia up` in another terminal).
            "revive_signal": self.revive_signal,
        }

    def write_state(self) -> None:
        """`run/mesh.json`, written whole (a reader never sees half of it)."""
        if self._stopping:
            return
        text = json.dumps(self.state(), indent=2)
        if text != self._written:
            write_atomically(state_file(self.settings.data_dir), text)
            self._written = text

    # -- stopping ------------------------------------------------------------------------------

    def hurry(self) -> None:
        """A second Ctrl-C: stop waiting for services to drain."""
        self._hurry = True
        for unit in self.services.values():
            unit.kill()

    async def stop(self, grace: float | None = None) -> None:
        """SIGTERM every service and wait for them to drain, then stop the local model, NATS,
        PostgreSQL (whoever started the running ones)."""
        if self._stopping:
            return
        self._stopping = True
        # A server being started again finishes first, so that it is stopped below.
        await asyncio.gather(*self._launches, return_exceptions=True)
        grace = self.settings.GRPC_SHUTDOWN_GRACE_SECONDS + 5 if grace is None else grace
        services = list(self.services.values())
        for unit in services:
            unit.terminate()
        deadline = time.monotonic() + grace
        while any(u.pid() is not None for u in services) and not self._hurry:
            if time.monotonic() > deadline:
                stuck = [u.name for u in services if u.pid() is not None]
                log.warning("services did not stop in time; killing", services=stuck)
                break
            await asyncio.sleep(0.05)
        for unit in services:
            unit.kill()
            if unit.process is not None:
                await asyncio.to_thread(unit.process.wait)
            unit.state = UnitState.STOPPED
        log.info("services stopped", services=[u.name for u in services])
        for server in reversed(self.servers):
            await server.stop()
            server.state = UnitState.STOPPED
            log.info("stopped", unit=server.name)
        # Only the supervisor that wrote mesh.json removes it: a second `amelia up` that was
        # refused must leave the running mesh findable (and stoppable by `amelia down`).
        if self._written and self._owns_state_file():
            with contextlib.suppress(OSError):
                state_file(self.settings.data_dir).unlink()

    def _owns_state_file(self) -> bool:
        try:
            written = json.loads(state_file(self.settings.data_dir).read_text())
            return int(written["pid"]) == os.getpid()
        except (OSError, ValueError, KeyError, TypeError):
            return False
