"""The three gRPC services (events, agents without workers, rag) in process on their own
PostgreSQL and NATS, for tests that stop those servers or fill them with hostile data without
touching the session's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from local_model import local_model

from amelia.v1 import agents_pb2_grpc, events_pb2_grpc, rag_pb2_grpc
from amelia_agents.server import build_service as build_agents
from amelia_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from amelia_common.grpc_client import client_options
from amelia_common.grpc_server import GrpcService
from amelia_common.settings import Settings
from amelia_events.server import build_service as build_events
from amelia_rag.embeddings import LocalEmbedder
from amelia_rag.server import build_service as build_rag

SERVING = health_pb2.HealthCheckResponse.SERVING

HEALTH_NAMES = {
    "events": "amelia.v1.EventService",
    "agents": "amelia.v1.AgentService",
    "rag": "amelia.v1.RagService",
}


@dataclass
class Mesh:
    """The running services, a channel to each, and the servers they depend on.

    The channels send each call once: these tests judge the services' own answers, and the
    mesh's clients (`aio_channel`) send a read that met UNAVAILABLE four more times, which
    repeats the same answer after as many waits (seconds each while NATS is down)."""

    settings: Settings
    postgres: EmbeddedPostgres
    nats: EmbeddedNats
    services: dict[str, GrpcService]
    channels: dict[str, grpc.aio.Channel]

    @property
    def events(self) -> events_pb2_grpc.EventServiceStub:
        return events_pb2_grpc.EventServiceStub(self.channels["events"])

    @property
    def agents(self) -> agents_pb2_grpc.AgentServiceStub:
        return agents_pb2_grpc.AgentServiceStub(self.channels["agents"])

    @property
    def rag(self) -> rag_pb2_grpc.RagServiceStub:
        return rag_pb2_grpc.RagServiceStub(self.channels["rag"])

    async def health(self, service: str) -> int:
        reply = await health_pb2_grpc.HealthStub(self.channels[service]).Check(
            health_pb2.HealthCheckRequest(service=HEALTH_NAMES[service]), timeout=10
        )
        return int(reply.status)

    async def wait_serving(self, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        for service in self.services:
            while (status := await self.health(service)) != SERVING:
                assert asyncio.get_running_loop().time() < deadline, f"{service}: {status}"
                await asyncio.sleep(0.2)


@asynccontextmanager
async def own_mesh(root: Path, base: Settings, **overrides: Any) -> AsyncIterator[Mesh]:
    """Start PostgreSQL, NATS and the three services under `root`; stop everything after."""
    postgres = EmbeddedPostgres(root)
    nats = EmbeddedNats(root, free_port())
    settings = base.model_copy(
        update={
            "DATABASE_URL": postgres.start(),
            "NATS_URL": nats.start(),
            "AGENT_WORKERS": 0,
            **overrides,
        }
    )
    embedder = LocalEmbedder.from_model(local_model(), settings)
    services: dict[str, GrpcService] = {}
    channels: dict[str, grpc.aio.Channel] = {}
    try:
        services["events"] = await build_events(settings)
        events_address = f"127.0.0.1:{await services['events'].start()}"
        # agents reads a run's events (StreamRun) through the events service.
        settings = settings.model_copy(update={"EVENTS_ADDRESS": events_address})
        services["agents"] = await build_agents(settings)
        services["rag"] = await build_rag(settings, embedder=embedder)
        for name, service in services.items():
            port = service.bound_port or await service.start()
            channels[name] = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=client_options(settings)
            )
        yield Mesh(settings, postgres, nats, services, channels)
    finally:
        for channel in channels.values():
            await channel.close()
        for service in services.values():
            await service.stop(0)
        await embedder.aclose()
        nats.stop()
        postgres.stop()
