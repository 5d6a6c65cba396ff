"""`chat` (and agents): thread memory, and passages from the real RAG service in the prompt the
model gets (recorded by the fake Anthropic/OpenAI servers) and in `run.retrieval` events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
import pytest
from agents_fake_llm import REPLY, FakeAnthropic, FakeOpenAI
from agents_helpers import S, collect, create_run, data, rpc_error, types, wait_status

from amelia.v1 import agents_pb2_grpc, rag_pb2, rag_pb2_grpc
from amelia_agents.server import build_service as build_agents
from amelia_common.embedded import free_port
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings

Stub: TypeAlias = agents_pb2_grpc.AgentServiceStub

SAVANNA = """# Field notes: the savanna

## Zebras

Every July the zebra herds of the Serengeti cross the Mara river, where crocodiles wait for
them. The crossing at Lookout Point is the one the rangers count.

## Baobabs

The oldest baobab near the camp is called Grandmother Tree; rangers measured its trunk at
twenty-six metres around.
"""

OTHER = """# Kitchen inventory

The camp kitchen keeps forty kilograms of rice, twelve jars of honey and a single cast-iron
pan that nobody is allowed to wash with soap.
"""


@pytest.fixture(scope="module")
async def documents(rag: rag_pb2_grpc.RagServiceStub) -> AsyncIterator[dict[str, str]]:
    """Two documents ingested into the real RAG service: name -> (its text)."""
    tag = uuid.uuid4().hex[:8]
    names: dict[str, str] = {}
    for title, text in (("savanna", SAVANNA), ("kitchen", OTHER)):
        reply = await rag.IngestDocument(
            rag_pb2.IngestDocumentRequest(
                source=rag_pb2.DocumentSource(
                    title=f"{title}-{tag}", file_path=f"/workflows-tests/{tag}/{title}.md"
                ),
                content=text.encode(),
            )
        )
        names[title] = reply.document.name
    yield names
    for name in names.values():
        await rag.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name))


async def create_agent(stub: Stub, **fields: Any) -> str:
    agent = S.Agent(**fields)
    reply = await stub.CreateAgent(S.CreateAgentRequest(agent=agent))
    name: str = reply.agent.name
    return name


def body_text(body: dict[str, Any]) -> str:
    """Everything a model request carried as text: system prompt(s) and messages."""
    parts = [str(body.get("system", ""))]
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(str(p.get("text", "")) for p in content)
    return "\n".join(parts)


async def test_the_second_message_in_a_thread_sees_the_first(
    agents: Stub, fake_anthropic: FakeAnthropic
) -> None:
    first = await create_run(
        agents,
        workflow="workflows/chat",
        input={"message": "My name is Ada.", "model": "anthropic:transcript"},
    )
    await wait_status(agents, first.name, S.RUN_STATUS_COMPLETED)
    second = await create_run(
        agents,
        workflow="workflows/chat",
        thread=first.thread,
        input={"message": "What is my name?", "model": "anthropic:transcript"},
    )
    done = await wait_status(agents, second.name, S.RUN_STATUS_COMPLETED)
    sent = fake_anthropic.requests[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "My name is Ada."
    assert sent[2]["content"] == "What is my name?"
    assert done.output["message"] == (
        "user: My name is Ada.\nassistant: user: My name is Ada.\nuser: What is my name?"
    )
    # No context sources: no retrieval step at all.
    events = await collect(agents, second.name)
    assert "run.retrieval" not in types(events)
    assert [d["node"] for d in data(events, "run.node.started")] == ["respond"]


async def test_an_agent_with_context_sources_gets_the_passages_in_its_prompt(
    agents: Stub, fake_anthropic: FakeAnthropic, documents: dict[str, str]
) -> None:
    agent = await create_agent(
        agents,
        system_prompt="You are the camp's guide.",
        model="anthropic:tokens",
        context_sources=[documents["savanna"]],
    )
    run = await create_run(
        agents, agent=agent, input={"message": "When do the zebras cross the Mara river?"}
    )
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == REPLY

    events = await collect(agents, run.name)
    assert [d["node"] for d in data(events, "run.node.started")] == ["retrieve", "respond"]
    [retrieval] = data(events, "run.retrieval")
    assert retrieval["query"] == "When do the zebras cross the Mara river?"
    assert retrieval["sources"] == [documents["savanna"]]
    passages = retrieval["passages"]
    assert passages, "nothing retrieved"
    assert {p["document"] for p in passages} == {documents["savanna"]}
    for p in passages:
        # The offsets locate the passage in the document's text.
        assert SAVANNA[int(p["start_offset"]) : int(p["end_offset"])] == p["content"]
    assert any("Mara river" in p["content"] for p in passages)

    # The model got the passages in its system prompt, after the agent's own prompt.
    body = next(
        r["body"]
        for r in reversed(fake_anthropic.requests)
        if "When do the zebras" in body_text(r["body"])
    )
    system = body["system"] if isinstance(body["system"], str) else body_text(body)
    assert system.startswith("You are the camp's guide.")
    for p in passages:
        assert p["content"] in system
        where = f"{p['document']}, characters {int(p['start_offset'])}-{int(p['end_offset'])}"
        assert where in system
    # The passages inform this reply; they are not added to the thread's memory.
    assert [m["role"] for m in body["messages"]] == ["user"]


async def test_chat_with_all_documents_over_openai(
    agents: Stub, fake_openai: FakeOpenAI, documents: dict[str, str]
) -> None:
    question = "How many kilograms of rice does the camp kitchen keep?"
    run = await create_run(
        agents,
        workflow="workflows/chat",
        input={
            "message": question,
            "model": f"openai:tokens@{fake_openai.url}/v1",
            "context_sources": ["documents/*"],
        },
    )
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    [retrieval] = data(await collect(agents, run.name), "run.retrieval")
    best = retrieval["passages"][0]
    assert best["document"] == documents["kitchen"]
    assert "forty kilograms of rice" in best["content"]
    assert OTHER[int(best["start_offset"]) : int(best["end_offset"])] == best["content"]
    sent = fake_openai.requests[-1]["body"]["messages"]
    assert sent[0]["role"] == "system" and "forty kilograms of rice" in sent[0]["content"]
    assert sent[-1] == {"role": "user", "content": question}


async def test_bad_context_sources_are_refused_at_create_run(agents: Stub) -> None:
    error = await rpc_error(
        create_run(
            agents,
            workflow="workflows/chat",
            input={"message": "hi", "context_sources": ["notes/1"]},
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "documents/<id>" in (error.details() or "")


async def test_an_unreachable_rag_service_fails_the_run_clearly(
    infra: object, events_address: str, fake_anthropic: FakeAnthropic
) -> None:
    """RAG down: retried like a model call, then FAILED saying what is missing (no answer
    that pretends to come from the documents)."""
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        EVENTS_ADDRESS=events_address,
        RAG_ADDRESS=address,
        ANTHROPIC_API_KEY="sk-ant-test-key",
        ANTHROPIC_BASE_URL=fake_anthropic.url,
        AGENT_WORKERS=1,
        RUNS_QUEUE_STREAM="AMELIA_RUNS_WORKFLOWS_NO_RAG",
        LLM_RETRY_BACKOFF_SECONDS=0.05,
    )
    service = await build_agents(settings)
    port = await service.start()
    try:
        async with aio_channel(f"127.0.0.1:{port}", settings) as channel:
            stub = agents_pb2_grpc.AgentServiceStub(channel)
            calls = len(fake_anthropic.requests)
            run = await create_run(
                stub,
                workflow="workflows/chat",
                input={
                    "message": "hi",
                    "model": "anthropic:tokens",
                    "context_sources": ["documents/*"],
                },
            )
            failed = await wait_status(stub, run.name, S.RUN_STATUS_FAILED)
            assert failed.error.startswith(f"rag: the RAG service at {address} is unreachable")
            assert "context_sources" in failed.error
            events = await collect(stub, run.name)
            assert len(data(events, "run.retry")) == 3
            assert len(fake_anthropic.requests) == calls, "the model was called anyway"
    finally:
        await service.stop(1.0)
