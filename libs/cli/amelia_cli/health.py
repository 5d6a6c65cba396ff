"""Asking each part of the mesh whether it is up: gRPC health, the gateway, NATS, PostgreSQL."""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from amelia_cli.mesh import SERVICES, ServiceSpec, service_address
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings


@dataclass
class Probe:
    """One line of `amelia status`."""

    name: str
    address: str
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "SERVING"


async def grpc_health(settings: Settings, address: str, service: str, timeout: float = 2.0) -> str:
    """The grpc.health.v1 status name, or UNREACHABLE."""
    async with aio_channel(address, settings) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return "UNREACHABLE" if exc.code() == grpc.StatusCode.UNAVAILABLE else exc.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def http_health(url: str, timeout: float = 2.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return "SERVING" if reply.status == 200 else f"HTTP {reply.status}"
    except OSError:
        return "UNREACHABLE"


async def probe_service(settings: Settings, spec: ServiceSpec) -> Probe:
    address = service_address(settings, spec)
    if spec.grpc_service:
        status = await grpc_health(settings, address, spec.grpc_service)
        return Probe(spec.name, f"grpc://{address}", status)
    url = f"http://{address}/healthz"
    status = await asyncio.to_thread(http_health, url)
    return Probe(spec.name, f"http://{address}", status)


async def probe_nats(settings: Settings) -> Probe:
    import nats

    from amelia_common.nats_client import nats_servers

    servers = nats_servers(settings)

    async def quiet(exc: Exception) -> None:
        """Refusals are reported as the status, not printed."""

    try:
        # nats-py retries the first connect forever unless attempts are bounded.
        nc = await asyncio.wait_for(
            nats.connect(
                servers=servers, connect_timeout=2, max_reconnect_attempts=1, error_cb=quiet
            ),
            5,
        )
    except Exception as exc:  # noqa: BLE001 - reported as a status
        return Probe("nats", ",".join(servers), "UNREACHABLE", str(exc) or type(exc).__name__)
    try:
        js = nc.jetstream()
        info = await js.account_info()
        detail = f"JetStream: {info.streams} streams"
    except Exception as exc:  # noqa: BLE001
        detail = f"JetStream unavailable: {exc}"
        return Probe("nats", ",".join(servers), "NOT_SERVING", detail)
    finally:
        await nc.close()
    return Probe("nats", ",".join(servers), "SERVING", detail)


async def probe_postgres(settings: Settings) -> Probe:
    import asyncpg

    from amelia_common.db import libpq_url

    url = libpq_url(settings.DATABASE_URL)
    shown = url.split("@")[-1]
    if not url:
        return Probe("postgres", "-", "UNKNOWN", "DATABASE_URL not set and mesh not running")
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except Exception as exc:  # noqa: BLE001 - reported as a status
        return Probe("postgres", shown, "UNREACHABLE", str(exc))
    try:
        version = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        )
    finally:
        await conn.close()
    return Probe("postgres", shown, "SERVING", f"pgvector {version or 'missing'}")


async def probe_all(settings: Settings) -> list[Probe]:
    results = await asyncio.gather(
        *(probe_service(settings, spec) for spec in SERVICES),
        probe_nats(settings),
        probe_postgres(settings),
    )
    return list(results)
