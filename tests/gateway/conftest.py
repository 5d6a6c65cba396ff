"""The gateway under a real uvicorn server, in front of a real events service (port 0).

One events service for the gateway tests (`events_service`, shared, tests/conftest.py); tests use their own subjects so they
never see each other's events. Agents and rag upstreams point at closed ports unless a test
starts those services itself, or uses `mesh` (real agents and rag behind a gateway, started once
for the folder).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gateway_helpers import Mesh, Publisher, RunningGateway, closed_address, start_gateway

from amelia_common.settings import Settings


@pytest.fixture
def gateway_settings(infra: Any, events_address: str) -> Settings:
    settings: Settings = infra.settings(
        EVENTS_ADDRESS=events_address,
        AGENTS_ADDRESS=closed_address(),
        RAG_ADDRESS=closed_address(),
        GATEWAY_TIMEOUT_SECONDS=10,
    )
    return settings


@pytest.fixture
async def gateway(gateway_settings: Settings) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(gateway_settings)
    yield running
    await running.stop()


@pytest.fixture
async def http(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        yield client


@pytest.fixture
async def publisher(events_address: str, infra: Any) -> AsyncIterator[Publisher]:
    pub = Publisher.connect(events_address, infra.settings())
    yield pub
    await pub.close()


@pytest.fixture(scope="package")
async def mesh(infra: Any, events_address: str) -> AsyncIterator[Mesh]:
    """The whole mesh behind a gateway, for the modules that test through all three services
    (each test uses names of its own, so they share one). Its agents service takes the folder's
    own run queue (tests/conftest.py: Infra.settings)."""
    from amelia_agents.server import build_service as build_agents
    from amelia_rag.server import build_service as build_rag

    # Large chunks: the uploads here are bigger than one 256 KiB piece, embedding them is not
    # what these tests are about.
    settings = infra.settings(EVENTS_ADDRESS=events_address, AGENT_WORKERS=2, CHUNK_SIZE=4000)
    agents = await build_agents(settings)
    agents_port = await agents.start()
    rag = await build_rag(settings)
    rag_port = await rag.start()
    gateway_settings: Settings = infra.settings(
        EVENTS_ADDRESS=events_address,
        AGENTS_ADDRESS=f"127.0.0.1:{agents_port}",
        RAG_ADDRESS=f"127.0.0.1:{rag_port}",
    )
    gateway = await start_gateway(gateway_settings)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        yield Mesh(gateway, agents, rag, http)
    await gateway.stop()
    await agents.stop(1.0)
    await rag.stop(1.0)
