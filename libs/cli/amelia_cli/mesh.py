"""What the mesh is made of: its services, how each is started, and where each listens.

One table, read by `amelia up` (to start them), `amelia status` (to check them) and the docs.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from amelia_common.settings import Settings


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the mesh."""

    name: str
    module: str
    grpc_service: str  # full gRPC service name for health; empty for the HTTP gateway
    port_setting: str
    # What it reports in its health as `dependency/<name>` entries.
    dependencies: tuple[str, ...] = ()
    # The setting of its Prometheus endpoint's port ("": served on its own HTTP port).
    metrics_setting: str = ""
    # The setting its clients reach it by (one address, a comma list of replicas, dns:///).
    address_setting: str = ""

    @property
    def scalable(self) -> bool:
        """Run as several replicas by `amelia up --replicas` (its clients take a list)."""
        return bool(self.address_setting)

    def port(self, settings: Settings) -> int:
        port: int = getattr(settings, self.port_setting)
        return port

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module]


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "events",
        "amelia_events",
        "amelia.v1.EventService",
        "EVENTS_GRPC_PORT",
        ("nats",),
        "EVENTS_METRICS_PORT",
        "EVENTS_ADDRESS",
    ),
    ServiceSpec(
        "rag",
        "amelia_rag",
        "amelia.v1.RagService",
        "RAG_GRPC_PORT",
        ("nats", "postgres"),
        "RAG_METRICS_PORT",
        "RAG_ADDRESS",
    ),
    ServiceSpec(
        "agents",
        "amelia_agents",
        "amelia.v1.AgentService",
        "AGENTS_GRPC_PORT",
        ("nats", "postgres"),
        "AGENTS_METRICS_PORT",
        "AGENTS_ADDRESS",
    ),
    ServiceSpec("gateway", "amelia_gateway", "", "PORT"),
)


def client_host(settings: Settings) -> str:
    """Where a local client reaches a service bound to `settings.bind_host`."""
    host = settings.bind_host
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def service_address(settings: Settings, spec: ServiceSpec) -> str:
    return f"{client_host(settings)}:{spec.port(settings)}"


def client_target(settings: Settings, spec: ServiceSpec, state: dict[str, Any] | None) -> str:
    """Where the CLI reaches `spec`, one rule for every command (`amelia status` included):

    1. its `*_ADDRESS`, when the user set it (environment or `.env`): named on purpose, it wins,
       as kubectl's `--server` beats the kubeconfig and `DOCKER_HOST` the docker context;
    2. else the running `amelia up`'s mesh.json (`state`): every replica it runs, or its port;
    3. else its `*_GRPC_PORT` (`PORT` for the gateway) on this host.

    mesh.json beats the ports, so the CLI never talks to another mesh on the default ports
    while the one `amelia up` runs here listens on others."""
    setting = spec.address_setting
    if setting and setting in settings.model_fields_set:
        return str(getattr(settings, setting))
    recorded = ((state or {}).get("addresses") or {}).get(setting) if setting else None
    if recorded:
        return ",".join(recorded) if isinstance(recorded, list) else str(recorded)
    return service_address(settings, spec)


def service_env(settings: Settings, addresses: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment that points every service at the same infrastructure (with as many stream
    copies as it keeps) and at each other (`addresses`: a comma list of replicas by
    `*_ADDRESS`, else the one port), and
    at the same default model and local model server (the embedded one listens on
    LOCAL_MODEL_PORT; a LOCAL_MODEL_URL is passed on)."""
    host = client_host(settings)
    return {
        "DATABASE_URL": settings.DATABASE_URL,
        "NATS_URL": settings.NATS_URL,
        "EVENTS_STREAM_REPLICAS": str(settings.EVENTS_STREAM_REPLICAS),
        "RUNS_QUEUE_REPLICAS": str(settings.RUNS_QUEUE_REPLICAS),
        "AMELIA_DATA_DIR": str(settings.data_dir),
        "EVENTS_ADDRESS": f"{host}:{settings.EVENTS_GRPC_PORT}",
        "AGENTS_ADDRESS": f"{host}:{settings.AGENTS_GRPC_PORT}",
        "RAG_ADDRESS": f"{host}:{settings.RAG_GRPC_PORT}",
        "DEFAULT_MODEL": settings.DEFAULT_MODEL,
        "LOCAL_MODEL": settings.LOCAL_MODEL,
        "LOCAL_MODEL_URL": settings.LOCAL_MODEL_URL,
        "LOCAL_MODEL_PORT": str(settings.LOCAL_MODEL_PORT),
        # Where each listens: where the supervisor and `amelia status` look for it.
        **{spec.port_setting: str(spec.port(settings)) for spec in SERVICES},
        **(addresses or {}),
    }
