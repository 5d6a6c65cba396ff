"""`chat` (and agents): thread memory, and passages from the real RAG service in the prompt the
model gets (recorded by the fake Anthropic/OpenAI servers) and in `run.retrieval` events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import pytest
from agents_fake_llm import REPLY, FakeAnthropic, FakeOpenAI
from agents_helpers import (
    S,
    chat_on_one_thread,
    collect,
    create_run,
    data,
    ingested_document,
    serve_agents,
    types,
    wait_status,
)

from amelia.v1 import agents_pb2_grpc, rag_pb2_grpc
from amelia_common.embedded import free_port
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
    """Two documents ingested into the real RAG service: title -> the document's name."""
    async with (
        ingested_document(rag, "savanna", SAVANNA, "workflows-tests") as savanna,
        ingested_document(rag, "kitchen", OTHER, "workflows-tests") as kitchen,
    ):
        yield {"savanna": savanna, "kitchen": kitchen}


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
    _, done = await chat_on_one_thread(
        agents,
        ("My name is Ada.", "anthropic:transcript"),
        ("What is my name?", "anthropic:transcript"),
    )
    sent = fake_anthropic.requests[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "My name is Ada."
    assert sent[2]["content"] == "What is my name?"
    assert done.output["message"] == (
        "user: My name is Ada.\nassistant: user: My name is Ada.\nuser: What is my name?"
    )
    # No context sources: no retrieval step at all.
    events = await collect(agents, done.name)
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


async def test_an_unreachable_rag_service_fails_the_run_clearly(
    workflows_settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    """RAG down: retried like a model call, then FAILED saying what is missing (no answer
    that pretends to come from the documents)."""
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = workflows_settings.model_copy(
        update={
            "RAG_ADDRESS": address,
            "AGENT_WORKERS": 1,
            "RUNS_QUEUE_STREAM": "AMELIA_RUNS_WORKFLOWS_NO_RAG",
        }
    )
    async with serve_agents(settings) as stub:
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
