"""Agents tests: the real events and agents services in process (port 0), on the session's real
PostgreSQL and NATS, with fake Anthropic/OpenAI servers speaking their streaming wire formats."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from agents_fake_llm import FakeAnthropic, fake_anthropic, fake_openai
from agents_helpers import serve_agents

from amelia.v1 import agents_pb2_grpc
from amelia_common.settings import Settings

TEST_WORKFLOWS = "agent_test_workflows"
__all__ = ["fake_anthropic", "fake_openai"]  # fixtures from tests/agents_fake_llm.py


@pytest.fixture(scope="session")
def agents_settings(infra: object, events_address: str, fake_anthropic: FakeAnthropic) -> Settings:
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        EVENTS_ADDRESS=events_address,
        ANTHROPIC_API_KEY="sk-ant-test-key",
        ANTHROPIC_BASE_URL=fake_anthropic.url,
        AGENT_WORKERS=3,
        RUN_ACK_WAIT_SECONDS=3,
        LLM_RETRY_BACKOFF_SECONDS=0.05,
        AGENT_WORKFLOW_MODULES=[TEST_WORKFLOWS],
    )
    return settings


@pytest.fixture(scope="session")
async def agents(agents_settings: Settings) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    async with serve_agents(agents_settings) as stub:
        yield stub
