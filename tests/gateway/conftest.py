"""The gateway under a real uvicorn server, in front of a real events service (port 0).

One events service for the gateway tests (session NATS); tests use their own subjects so they
never see each other's events. Agents and rag upstreams point at closed ports unless a test
starts those services itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gateway_support import Publisher, RunningGateway, closed_address, start_gateway

from amelia_common.settings import Settings
from amelia_events.server import EventsService, build_service


@pytest.fixture(scope="session")
async def events_service(infra: Any) -> AsyncIterator[EventsService]:
    settings = infra.settings()
    svc = await build_service(settings)
    await svc.start()
    yield svc
    await svc.stop(grace=1.0)


@pytest.fixture(scope="session")
def events_address(events_service: EventsService) -> str:
    return f"127.0.0.1:{events_service.bound_port}"


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
