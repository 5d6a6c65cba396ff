"""More runs on a `local:` model than the server has slots: the runs beyond them wait for a slot
in the agents service, say so (`run.model.waiting`, reason `slot`), and the wait does not count
against their timeout — all complete (QA s27 finding 2: with 6 chat runs on llama.cpp's 2
slots, 3 failed "timeout", two without a token, waiting unseen inside llama.cpp).

The fake llama.cpp server (tests/agents_fake_llm.py) is given one slot: it generates one reply
at a time, a request beyond it waiting inside the server as llama.cpp's do, and `/props` says
`total_slots: 1`. The first run's reply is held after its first token until the two others have
waited longer than their own timeout."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents_fake_llm import REPLY, FakeOpenAI
from agents_helpers import (
    S,
    collect,
    create_run,
    data,
    local_model_agents,
    tokens,
    types,
)
from prometheus_client import REGISTRY
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from amelia.v1 import agents_pb2_grpc
from amelia_common.eventlog import event_data

# The timeout of the runs that wait: shorter than they wait for the held first run.
TIMEOUT = 8
WAITING_GAUGE = "amelia_llm_slot_waiting_calls"


class OneSlotLlama(FakeOpenAI):
    """A llama.cpp server with one slot: one reply generated at a time, the first one held
    after its first token until `release("first")`."""

    def __init__(self) -> None:
        super().__init__(llama=True)
        self.slot = asyncio.Lock()
        self.served = 0

    async def props(self, request: Request) -> Response:
        return JSONResponse({"default_generation_settings": {"n_ctx": 4096}, "total_slots": 1})

    async def held(self, model: str, tokens: list[str]) -> AsyncIterator[str]:
        async with self.slot:
            first = self.served == 0
            self.served += 1
            for i, token in enumerate(tokens):
                if i == 1 and first:
                    await self.gate("first").wait()
                yield token


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[OneSlotLlama]:
    fake = OneSlotLlama()
    await fake.start()
    yield fake
    fake.release("first")
    await fake.stop()


@pytest.fixture(scope="module")
async def local_agents(
    infra: Any, events_address: str, server: OneSlotLlama
) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    # A worker loop for each run.
    async with local_model_agents(
        infra.settings, events_address, f"{server.url}/v1", "SLOTS", AGENT_WORKERS=4
    ) as stub:
        yield stub


async def _first_event(
    stub: agents_pb2_grpc.AgentServiceStub, name: str, event_type: str
) -> dict[str, Any]:
    """The data of the run's first `event_type` event, once it is published."""
    async with asyncio.timeout(120):
        async for response in stub.StreamRun(S.StreamRunRequest(name=name)):
            if response.event.type == event_type:
                return event_data(response.event)
    raise AssertionError(f"{name} ended without {event_type}")


async def test_runs_beyond_the_slots_wait_visibly_and_not_against_their_timeout(
    local_agents: agents_pb2_grpc.AgentServiceStub, server: OneSlotLlama
) -> None:
    agent = (
        await local_agents.CreateAgent(
            S.CreateAgentRequest(
                agent=S.Agent(model="local:tokens", retry_attempts=0),
                agent_id=f"slots-{uuid.uuid4().hex[:8]}",
            )
        )
    ).agent
    first = await create_run(local_agents, agent=agent.name, input={"message": "hi"}, timeout=600)
    await _first_event(local_agents, first.name, "run.token")  # it holds the one slot
    others = [
        await create_run(local_agents, agent=agent.name, input={"message": "hi"}, timeout=TIMEOUT)
        for _ in range(2)
    ]
    waiting = [await _first_event(local_agents, r.name, "run.model.waiting") for r in others]
    assert [w["reason"] for w in waiting] == ["slot", "slot"]
    assert sorted(w["ahead"] for w in waiting) == [0, 1]
    assert all(w["slots"] == 1 and "waiting for a free slot" in w["message"] for w in waiting)
    assert REGISTRY.get_sample_value(WAITING_GAUGE) == 2  # the service's /metrics
    # Longer than their timeout, waiting: none fails for it.
    await asyncio.sleep(TIMEOUT + 2)
    for run in others:
        now = (await local_agents.GetRun(S.GetRunRequest(name=run.name))).run
        assert now.status == S.RUN_STATUS_RUNNING, now.error
    server.release("first")
    for run in [first, *others]:
        events = await collect(local_agents, run.name, timeout=120)
        assert types(events)[-1] == "run.completed", data(events, "run.failed")
        assert "".join(tokens(events)) == REPLY
        # Only the runs that waited say so, once each.
        assert len(data(events, "run.model.waiting")) == (run is not first)
    assert REGISTRY.get_sample_value(WAITING_GAUGE) == 0
