"""A `local:` model's max_tokens must leave room for a prompt in the context of one of the
server's slots (LOCAL_MODEL_CONTEXT 8192 ÷ LOCAL_MODEL_SLOTS 2 = 4096 tokens here): more is
refused at CreateAgent, UpdateAgent and CreateRun with INVALID_ARGUMENT naming both numbers,
instead of being taken and every run failing (s27 left open)."""

from __future__ import annotations

import uuid

import grpc
from agents_helpers import S, create_run, rpc_error

from amelia.v1 import agents_pb2_grpc
from amelia_common.settings import PACKAGED_LOCAL_MODELS

LOCAL = f"local:{PACKAGED_LOCAL_MODELS[0]}"
TOO_MANY = 5000  # over the 4096 tokens of a request


async def test_max_tokens_beyond_the_local_models_context_are_refused_naming_both(
    agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    agent_id = f"local-max-{uuid.uuid4().hex[:8]}"
    refused = await rpc_error(
        agents.CreateAgent(
            S.CreateAgentRequest(agent=S.Agent(model=LOCAL, max_tokens=TOO_MANY), agent_id=agent_id)
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    said = refused.details() or ""
    assert f"max_tokens ({TOO_MANY})" in said and "4096 tokens" in said, said
    assert "LOCAL_MODEL_CONTEXT 8192" in said, said

    # Fewer are taken; another provider's model is not held to the local context.
    created = await agents.CreateAgent(
        S.CreateAgentRequest(agent=S.Agent(model=LOCAL, max_tokens=1000), agent_id=agent_id)
    )
    assert created.agent.max_tokens == 1000
    other = await agents.CreateAgent(
        S.CreateAgentRequest(
            agent=S.Agent(model="anthropic:claude-sonnet-4-5", max_tokens=TOO_MANY),
            agent_id=f"{agent_id}-b",
        )
    )
    assert other.agent.max_tokens == TOO_MANY
    change = S.Agent(name=created.agent.name, model=LOCAL, max_tokens=TOO_MANY)
    refused = await rpc_error(
        agents.UpdateAgent(S.UpdateAgentRequest(agent=change, update_mask=["max_tokens", "model"]))
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"max_tokens ({TOO_MANY})" in (refused.details() or "")
    kept = await agents.GetAgent(S.GetAgentRequest(name=created.agent.name))
    assert kept.agent.max_tokens == 1000

    # A run's override, at CreateRun: never queued.
    refused = await rpc_error(
        create_run(
            agents,
            workflow="workflows/chat",
            input={"message": "hi", "model": LOCAL, "max_tokens": TOO_MANY},
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    said = refused.details() or ""
    assert "input.max_tokens" in said and f"({TOO_MANY})" in said and "4096" in said, said
