"""A model server that stops sending in the middle of a reply (frozen, as a SIGSTOPped llama.cpp)
is noticed after LLM_STREAM_IDLE_SECONDS without a chunk: the run says it waits for the server
(`run.model.waiting`) and the reply is continued once the server answers, each token once (QA
s27 finding 4: the stream stalled for the SDK's 600 s read timeout, nothing said).

The fake llama.cpp server (tests/agents_fake_llm.py) stalls its first reply after a few tokens
and answers the next request (the continuation) at once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents_fake_llm import REPLY, FakeOpenAI, tokens_of
from agents_helpers import (
    S,
    collect,
    create_run,
    data,
    local_model_agents,
    tokens,
    types,
)

from amelia.v1 import agents_pb2_grpc

# Tokens the first reply streams before it stalls.
BEFORE_STALL = 3


class StallingLlama(FakeOpenAI):
    """A llama.cpp server whose first reply stops after BEFORE_STALL tokens, the connection
    left open (until `release("stalled")`)."""

    def __init__(self) -> None:
        super().__init__(llama=True)
        self.served = 0

    async def held(self, model: str, tokens: list[str]) -> AsyncIterator[str]:
        first = self.served == 0
        self.served += 1
        for i, token in enumerate(tokens):
            if first and i == BEFORE_STALL:
                await self.gate("stalled").wait()
            yield token


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[StallingLlama]:
    fake = StallingLlama()
    await fake.start()
    yield fake
    fake.release("stalled")
    await fake.stop()


@pytest.fixture(scope="module")
async def local_agents(
    infra: Any, events_address: str, server: StallingLlama
) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    async with local_model_agents(
        infra.settings, events_address, f"{server.url}/v1", "IDLE", LLM_STREAM_IDLE_SECONDS=1
    ) as stub:
        yield stub


async def test_a_stream_that_stalls_is_waited_for_and_continued(
    local_agents: agents_pb2_grpc.AgentServiceStub, server: StallingLlama
) -> None:
    agent = (
        await local_agents.CreateAgent(
            S.CreateAgentRequest(
                agent=S.Agent(model="local:tokens", retry_attempts=0),
                agent_id=f"idle-{uuid.uuid4().hex[:8]}",
            )
        )
    ).agent
    # Far less than the SDK's 600 s: the old client was still waiting when it ran out.
    run = await create_run(local_agents, agent=agent.name, input={"message": "hi"}, timeout=30)
    events = await collect(local_agents, run.name, timeout=120)
    assert types(events)[-1] == "run.completed", data(events, "run.failed")
    assert "".join(tokens(events)) == REPLY  # each token once
    waiting = data(events, "run.model.waiting")
    assert len(waiting) == 1
    assert waiting[0]["reason"] == "unreachable"
    assert "sent nothing for 1s (LLM_STREAM_IDLE_SECONDS)" in waiting[0]["message"]
    # The second request continued the reply after what the first had streamed.
    continued = server.requests[-1]["body"]["messages"][-1]
    assert continued["role"] == "assistant"
    assert continued["content"] == "".join(tokens_of(REPLY)[:BEFORE_STALL])
