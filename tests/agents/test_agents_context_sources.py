"""A malformed context source is refused where it is given — CreateAgent, UpdateAgent and
CreateRun's `input.context_sources` — with INVALID_ARGUMENT naming it and the accepted forms,
through one check (`retrieval.check_sources`). QA: `amelia agents create bad4 --context
documents/zzz` was created, and every run of it then failed in retrieve with the RAG service's
`'documents/zzz' is not a document name`. A well-formed id of no document is accepted (the
document can be ingested later; until then it gives no passages)."""

from __future__ import annotations

import uuid

import grpc
from agents_helpers import S, create_run, rpc_error

ACCEPTED = "it must be 'documents/<id>' (<id> a document's UUID"


async def test_a_malformed_source_is_refused_by_create_update_and_create_run(agents) -> None:
    agent_id = f"bad-{uuid.uuid4().hex[:8]}"
    for bad in ("documents/zzz", "documents/", "zzz", "documents/*/x"):
        refused = await rpc_error(
            agents.CreateAgent(
                S.CreateAgentRequest(
                    agent_id=agent_id, agent=S.Agent(model="offline:echo", context_sources=[bad])
                )
            )
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = refused.details() or ""
        assert f"agent.context_sources entry {bad!r} is not a context source" in details
        assert ACCEPTED in details and "'documents/*'" in details
    gone = await rpc_error(agents.GetAgent(S.GetAgentRequest(name=f"agents/{agent_id}")))
    assert gone.code() == grpc.StatusCode.NOT_FOUND

    unknown = f"documents/{uuid.uuid4()}"  # well-formed, no such document (yet): accepted
    created = await agents.CreateAgent(
        S.CreateAgentRequest(
            agent_id=agent_id, agent=S.Agent(model="offline:echo", context_sources=[unknown])
        )
    )
    assert list(created.agent.context_sources) == [unknown]
    change = S.Agent(name=created.agent.name, context_sources=["documents/zzz"])
    refused = await rpc_error(
        agents.UpdateAgent(S.UpdateAgentRequest(agent=change, update_mask=["context_sources"]))
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'documents/zzz' is not a context source" in (refused.details() or "")
    kept = await agents.GetAgent(S.GetAgentRequest(name=created.agent.name))
    assert list(kept.agent.context_sources) == [unknown]

    for bad in ("documents/zzz", "notes/1"):
        refused = await rpc_error(
            create_run(
                agents,
                workflow="workflows/chat",
                input={"message": "hello", "context_sources": [bad]},
            )
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = refused.details() or ""
        assert f"input.context_sources entry {bad!r} is not a context source" in details
        assert ACCEPTED in details
