"""The `search_documents` tool against the real RAG service: an agent's tool call searches its
documents and the passages (document, offsets, text) are the tool's result."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from agents_helpers import S, collect, create_run, data, ingested_document, wait_status

from amelia.v1 import agents_pb2_grpc, rag_pb2_grpc

NOTES = """# Ranger notes

Every July the zebra herds cross the Mara river at Lookout Point, where crocodiles wait.

The water tank behind the camp holds nine thousand litres and is refilled on Tuesdays.
"""


@pytest.fixture(scope="module")
async def notes(rag: rag_pb2_grpc.RagServiceStub) -> AsyncIterator[str]:
    async with ingested_document(rag, "ranger-notes", NOTES, "tools-tests") as name:
        yield name


async def test_search_documents_tool_returns_passages_with_offsets(
    agents: agents_pb2_grpc.AgentServiceStub, notes: str
) -> None:
    args = {"query": "When do the zebras cross the river?", "top_k": 2}
    agent = S.Agent(
        model=f"offline:tool:search_documents:{json.dumps(args)}",
        tools=["search_documents"],
        context_sources=[notes],
    )
    name = (await agents.CreateAgent(S.CreateAgentRequest(agent=agent))).agent.name
    run = await create_run(agents, agent=name, input={"message": "zebras?"})
    events = await collect(agents, run.name)
    [called] = data(events, "run.tool.called")
    assert (called["tool"], called["args"]) == ("search_documents", args)
    [result] = data(events, "run.tool.result")
    passages = json.loads(result["result"])["passages"]
    assert passages and len(passages) <= 2
    assert {p["document"] for p in passages} == {notes}
    for p in passages:
        assert NOTES[p["start_offset"] : p["end_offset"]] == p["content"]
    assert any("Mara river" in p["content"] for p in passages)
    # The search is shown like the agent's own retrieval, with the tool's query.
    assert args["query"] in [r["query"] for r in data(events, "run.retrieval")]
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert json.loads(done.output["message"]) == json.loads(result["result"])
