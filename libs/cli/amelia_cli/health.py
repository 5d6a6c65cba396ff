"""Asking each part of the mesh whether it is up: gRPC health, the gateway, NATS, PostgreSQL and
the local model server (or why none runs).

NATS and PostgreSQL are asked directly when their URLs are known (configured, or recorded by
the running `amelia up`); otherwise the services are asked how they see them (each reports
`dependency/nats`, `dependency/postgres` in its health), so `amelia status` tells the truth from
any directory. What the supervisor knows (a service given up on, one restarting) is laid over
the probes.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import urllib.error
import urllib.request
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from amelia_cli.mesh import SERVICES, ServiceSpec, client_target, service_address
from amelia_common.grpc_client import aio_channel
from amelia_common.grpc_server import DEPENDENCY_PREFIX
from amelia_common.llama_server import LocalModelReport, local_model_report, server_report
from amelia_common.settings import Settings

# What a health check answers about a name the service does not report.
_NO_ANSWER = ("UNREACHABLE", "NOT_FOUND", "SERVICE_UNKNOWN", "UNKNOWN")

# A part that accepts the connection but does not answer in time (frozen by SIGSTOP, or too
# busy): said in words, not as gRPC's DEADLINE_EXCEEDED with nothing beside it.
SILENT = "NO_ANSWER"
PROBE_SECONDS = 2.0


def silent_detail(timeout: float = PROBE_SECONDS) -> str:
    return f"no answer within {timeout:g} s (frozen or overloaded?)"


@dataclass
class Probe:
    """One line of `amelia status`."""

    name: str
    address: str
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Up, or not meant to run (a local model that is OFF)."""
        return self.status in ("SERVING", "OFF")


async def grpc_health(
    settings: Settings, address: str, service: str, timeout: float = PROBE_SECONDS
) -> str:
    """The grpc.health.v1 status name, UNREACHABLE, or NO_ANSWER (none within `timeout`)."""
    async with aio_channel(address, settings) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return SILENT
            return "UNREACHABLE" if exc.code() == grpc.StatusCode.UNAVAILABLE else exc.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def http_health(url: str, timeout: float = PROBE_SECONDS) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return "SERVING" if reply.status == 200 else f"HTTP {reply.status}"
    except TimeoutError:
        return SILENT
    except urllib.error.URLError as exc:
        return SILENT if isinstance(exc.reason, TimeoutError) else "UNREACHABLE"
    except OSError:
        return "UNREACHABLE"


def replica_addresses(target: str) -> list[str]:
    """Each replica behind a client target, to be asked alone: the addresses of a comma list,
    or every address a `dns:///name:port` resolves to (a headless Service's pods)."""
    if not target.startswith("dns:"):
        return [part.strip() for part in target.split(",") if part.strip()]
    host, _, port = target.split("///", 1)[-1].rpartition(":")
    try:
        found = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return [target]  # probed as it is: its probe says it cannot be reached
    addresses = []
    for family, *_, sockaddr in found:
        ip = str(sockaddr[0])
        address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        if address not in addresses:
            addresses.append(address)
    return addresses


def replica_targets(
    settings: Settings, spec: ServiceSpec, state: dict[str, Any] | None
) -> list[str]:
    """Each replica of `spec`, to be asked alone."""
    return replica_addresses(client_target(settings, spec, state))


async def probe_replicas(
    settings: Settings, spec: ServiceSpec, state: dict[str, Any] | None = None
) -> list[Probe]:
    """One probe per replica of `spec`."""
    targets = replica_targets(settings, spec, state)
    return list(await asyncio.gather(*(probe_service(settings, spec, t) for t in targets)))


async def probe_service(settings: Settings, spec: ServiceSpec, address: str = "") -> Probe:
    address = address or service_address(settings, spec)
    if spec.grpc_service:
        status = await grpc_health(settings, address, spec.grpc_service)
        shown = f"grpc://{address}"
    else:
        status = await asyncio.to_thread(http_health, f"http://{address}/healthz")
        shown = f"http://{address}"
    return Probe(spec.name, shown, status, silent_detail() if status == SILENT else "")


async def connect_briefly(settings: Settings) -> Any:
    """A NATS connection for one look (raises when NATS does not answer within seconds)."""
    import nats

    from amelia_common.nats_client import nats_servers

    async def quiet(exc: Exception) -> None:
        """Refusals are reported as the status, not printed."""

    # nats-py retries the first connect forever unless attempts are bounded.
    async with asyncio.timeout(5):
        return await nats.connect(
            servers=nats_servers(settings),
            connect_timeout=2,
            max_reconnect_attempts=1,
            error_cb=quiet,
        )


@dataclass
class StreamState:
    """A JetStream stream as its leader sees it: who leads, and how current each copy is."""

    stream: str
    leader: str
    copies: list[tuple[str, bool, int]]  # (node, current, messages behind)
    messages: int


async def stream_states(settings: Settings, streams: list[str]) -> list[StreamState]:
    """The streams' cluster state, asked of NATS itself (any node, any client: no monitoring
    port needed); a stream that does not exist yet is left out."""
    nc = await connect_briefly(settings)
    try:
        js = nc.jetstream(timeout=3)
        states = []
        for name in streams:
            try:
                info = await js.stream_info(name)
            except Exception:  # noqa: BLE001 - not created yet, or no leader now
                continue
            cluster = info.cluster
            copies = [
                (peer.name or "?", bool(peer.current) and not peer.offline, int(peer.lag or 0))
                for peer in (cluster.replicas or [] if cluster else [])
            ]
            leader = (cluster.leader if cluster else "") or ""
            states.append(StreamState(name, leader, copies, int(info.state.messages)))
        return states
    finally:
        await nc.close()


async def probe_nats(settings: Settings) -> Probe:
    from amelia_common.nats_client import nats_servers

    servers = nats_servers(settings)
    try:
        nc = await connect_briefly(settings)
    except Exception as exc:  # noqa: BLE001 - reported as a status
        return Probe("nats", ", ".join(servers), "UNREACHABLE", str(exc) or type(exc).__name__)
    try:
        js = nc.jetstream()
        info = await js.account_info()
        detail = f"JetStream: {info.streams} streams"
    except Exception as exc:  # noqa: BLE001
        detail = f"JetStream unavailable: {exc}"
        return Probe("nats", ", ".join(servers), "NOT_SERVING", detail)
    finally:
        await nc.close()
    return Probe("nats", ", ".join(servers), "SERVING", detail)


async def probe_postgres(settings: Settings) -> Probe:
    import asyncpg

    from amelia_common.db import libpq_url

    url = libpq_url(settings.DATABASE_URL)
    shown, socket_dir = postgres_address(url)
    where = f"; socket: {socket_dir}" if socket_dir else ""
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except Exception as exc:  # noqa: BLE001 - reported as a status
        return Probe("postgres", shown, "UNREACHABLE", f"{exc}{where}")
    try:
        version = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        )
    finally:
        await conn.close()
    return Probe("postgres", shown, "SERVING", f"pgvector {version or 'missing'}{where}")


def postgres_address(url: str) -> tuple[str, str]:
    """How `amelia status` names the database: `host:port/db`, no credentials; one on a Unix
    socket (the embedded one) as `db (socket)` and the socket's folder apart (a path of 50
    characters in the address column left no room for the rest at 80 columns)."""
    parts = urlsplit(url)
    socket_dir = next((h for h in parse_qs(parts.query).get("host", []) if h.startswith("/")), "")
    if socket_dir:
        return f"{parts.path.lstrip('/') or 'postgres'} (socket)", socket_dir
    return url.split("@")[-1], ""


async def probe_dependency(settings: Settings, name: str) -> Probe:
    """`name` (nats, postgres) as the services that use it see it."""
    users = [spec for spec in SERVICES if name in spec.dependencies]
    answers = await asyncio.gather(
        *(
            grpc_health(settings, service_address(settings, spec), DEPENDENCY_PREFIX + name)
            for spec in users
        )
    )
    known = {spec.name: answer for spec, answer in zip(users, answers, strict=True)}
    known = {service: answer for service, answer in known.items() if answer not in _NO_ANSWER}
    where = f"no mesh state under {settings.data_dir}"
    if not known:
        return Probe(name, "-", "UNKNOWN", f"mesh not running ({where}, no service answers)")
    address = "as seen by " + ", ".join(known)
    if all(answer == "SERVING" for answer in known.values()):
        return Probe(name, address, "SERVING", f"reported by the services ({where})")
    detail = ", ".join(f"{service}: {answer}" for service, answer in known.items())
    return Probe(name, address, "NOT_SERVING", detail)


def _local_model(settings: Settings, state: dict[str, Any] | None) -> LocalModelReport:
    """What the running `amelia up` chose (`local_model` of mesh.json, its server's files under
    the mesh's data dir), else what the settings say: its server, the one LOCAL_MODEL_URL
    names, or OFF and why. A log named is one that exists (from another folder, the settings'
    data dir is not the mesh's)."""
    recorded = (state or {}).get("local_model")
    if recorded is None:
        report = local_model_report(settings)
    elif not recorded.get("url"):
        return LocalModelReport("OFF", why=str(recorded.get("off") or "no local model"))
    else:
        data_dir = Path(str((state or {}).get("data_dir") or settings.data_dir))
        report = server_report(str(recorded["url"]), data_dir if recorded.get("embedded") else None)
    if report.log and not Path(report.log).exists():
        report = replace(report, log="")
    return report


async def probe_local_model(settings: Settings, state: dict[str, Any] | None = None) -> Probe:
    report = await asyncio.to_thread(_local_model, settings, state)
    return Probe("local-model", report.url or "-", report.status, report.detail())


def with_supervisor_view(probe: Probe, unit: dict[str, Any] | None) -> Probe:
    """A probe that failed, explained by the supervisor: FAILED (given up on) or RESTARTING,
    with how it last ended and where its log is."""
    if probe.ok or not unit or unit.get("state") in (None, "RUNNING"):
        return probe
    parts = [str(unit.get("last_exit") or ""), f"{unit.get('restarts', 0)} restarts"]
    if unit.get("log"):
        parts.append(f"log: {unit['log']}")
    detail = "; ".join(part for part in parts if part)
    return replace(probe, status=str(unit["state"]), detail=detail)


async def probe_all(settings: Settings, state: dict[str, Any] | None = None) -> list[Probe]:
    """Every part of the mesh; `state` is the running supervisor's `mesh.json`, if found."""
    # What the probes import is loaded before they start: imported inside one, it held the
    # event loop while the gRPC probes' 2 s deadlines ran (amelia_common.db, SQLAlchemy, took
    # 2 s on a loaded machine) and every service showed DEADLINE_EXCEEDED.
    for module, wanted in (
        ("amelia_common.nats_client", settings.NATS_URL),
        ("asyncpg", settings.DATABASE_URL),
        ("amelia_common.db", settings.DATABASE_URL),
    ):
        if wanted:
            importlib.import_module(module)

    async def alone(probe: Awaitable[Probe]) -> list[Probe]:
        return [await probe]

    groups = await asyncio.gather(
        *(probe_replicas(settings, spec, state) for spec in SERVICES),
        alone(probe_nats(settings) if settings.NATS_URL else probe_dependency(settings, "nats")),
        alone(
            probe_postgres(settings)
            if settings.DATABASE_URL
            else probe_dependency(settings, "postgres")
        ),
        alone(probe_local_model(settings, state)),
    )
    units: dict[str, Any] = (state or {}).get("units", {})
    # A replica `amelia up --replicas` runs is named as its unit (`events-2`, as its log is).
    named = {f"grpc://{u['address']}": n for n, u in units.items() if u.get("address")}
    probes = [replace(p, name=named.get(p.address, p.name)) for group in groups for p in group]
    return [with_supervisor_view(probe, units.get(probe.name)) for probe in probes]
