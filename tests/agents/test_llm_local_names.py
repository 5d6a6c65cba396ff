"""CreateAgent and UpdateAgent refuse a `local:` model `amelia up` cannot serve, with
INVALID_ARGUMENT naming those it can, and store nothing (QA: `local:nonexistent-model` was
accepted, and its runs then advised `set LOCAL_MODEL=nonexistent-model`, not a valid value)."""

from __future__ import annotations

import uuid

import grpc
from agents_helpers import S, rpc_error

from amelia_common.settings import PACKAGED_LOCAL_MODELS


async def test_an_agent_cannot_name_a_local_model_no_one_can_serve(agents) -> None:
    agent_id = f"local-{uuid.uuid4().hex[:8]}"
    bad = S.Agent(model="local:nonexistent-model")
    refused = await rpc_error(
        agents.CreateAgent(S.CreateAgentRequest(agent=bad, agent_id=agent_id))
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'local:nonexistent-model'" in (refused.details() or "")
    assert all(f"'local:{name}'" in (refused.details() or "") for name in PACKAGED_LOCAL_MODELS)
    gone = await rpc_error(agents.GetAgent(S.GetAgentRequest(name=f"agents/{agent_id}")))
    assert gone.code() == grpc.StatusCode.NOT_FOUND

    good = S.Agent(model=f"local:{PACKAGED_LOCAL_MODELS[0]}")
    created = await agents.CreateAgent(S.CreateAgentRequest(agent=good, agent_id=agent_id))
    change = S.Agent(name=created.agent.name, model="local:nonexistent-model")
    refused = await rpc_error(
        agents.UpdateAgent(S.UpdateAgentRequest(agent=change, update_mask=["model"]))
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    kept = await agents.GetAgent(S.GetAgentRequest(name=created.agent.name))
    assert kept.agent.model == good.model
