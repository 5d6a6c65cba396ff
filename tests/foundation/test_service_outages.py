"""Real services report NOT_SERVING while a dependency is down and SERVING once it is back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from amelia.v1 import agents_pb2, agents_pb2_grpc
from amelia_agents.server import build_service as build_agents
from amelia_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings
from amelia_events.server import build_service as build_events

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def wait_for(port: int, service: str, expected: int, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            if reply.status == expected:
                return
            assert asyncio.get_running_loop().time() < deadline, f"{service} stayed {reply.status}"
            await asyncio.sleep(0.2)


async def test_events_service_follows_its_nats(tmp_path: Path, settings: Settings) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    own = settings.model_copy(update={"NATS_URL": nats.start()})
    service = await build_events(own)
    port = await service.start()
    try:
        await wait_for(port, "amelia.v1.EventService", SERVING)
        nats.stop()
        await wait_for(port, "amelia.v1.EventService", NOT_SERVING)
        await wait_for(port, "dependency/nats", NOT_SERVING)
        nats.start()
        await wait_for(port, "amelia.v1.EventService", SERVING)
    finally:
        await service.stop(0)
        nats.stop()


async def test_agents_service_follows_its_postgres(tmp_path: Path, settings: Settings) -> None:
    postgres = EmbeddedPostgres(tmp_path)
    own = settings.model_copy(update={"DATABASE_URL": postgres.start(), "AGENT_WORKERS": 0})
    service = await build_agents(own)
    port = await service.start()
    try:
        await wait_for(port, "amelia.v1.AgentService", SERVING)
        postgres.stop()
        await wait_for(port, "amelia.v1.AgentService", NOT_SERVING)
        await wait_for(port, "dependency/postgres", NOT_SERVING)
        postgres.start()
        await wait_for(port, "amelia.v1.AgentService", SERVING)
    finally:
        await service.stop(0)
        postgres.stop()


async def test_create_run_with_the_queue_down_records_nothing(
    tmp_path: Path, settings: Settings
) -> None:
    """UNAVAILABLE, no run stored, the thread not blocked; once NATS is back the run goes."""
    nats = EmbeddedNats(tmp_path, free_port())
    own = settings.model_copy(update={"NATS_URL": nats.start(), "AGENT_WORKERS": 0})
    service = await build_agents(own)
    port = await service.start()
    channel = aio_channel(f"127.0.0.1:{port}", own)
    stub = agents_pb2_grpc.AgentServiceStub(channel)
    try:
        thread = (await stub.CreateThread(agents_pb2.CreateThreadRequest())).thread.name
        run = agents_pb2.Run(workflow="workflows/echo", thread=thread)
        run.input.update({"message": "hello"})
        nats.stop()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateRun(agents_pb2.CreateRunRequest(run=run), timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "nothing was started" in (refused.value.details() or "")
        listed = await stub.ListRuns(agents_pb2.ListRunsRequest(thread=thread))
        assert list(listed.runs) == []
        nats.start()
        await wait_for(port, "amelia.v1.AgentService", SERVING)
        created = await stub.CreateRun(agents_pb2.CreateRunRequest(run=run), timeout=60)
        assert created.run.status == agents_pb2.RUN_STATUS_QUEUED
    finally:
        await channel.close()
        await service.stop(0)
        nats.stop()
