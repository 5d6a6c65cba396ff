"""A reply the model server cut at max_tokens (OpenAI's `finish_reason: "length"`) is told: the run
publishes `run.model.cut` (finish_reason, max_tokens, a message), its node's end and its output
say `finish_reason: "length"` — and a `local:` tools agent
whose tool call was cut fails saying so instead of completing with the JSON fragment as its
answer (QA s27 finding 3: `{"name": "calculator",` was a run's answer).

The fake llama.cpp server (tests/agents_fake_llm.py) ends every reply of the models below with
`finish_reason: "length"`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents_fake_llm import FakeOpenAI, openai_chunk, tokens_of
from agents_helpers import S, collect, create_run, data, serve_agents, tokens, types
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from amelia.v1 import agents_pb2_grpc

# What each model writes before max_tokens cuts it.
CUT = {
    "cut-text": "The capital of France is",
    "cut-call": '{"name": "calculator", ',
    "cut-answer": '{"answer": "The capital of',
}


class CuttingLlama(FakeOpenAI):
    """A llama.cpp server whose replies all stop at max_tokens."""

    def __init__(self) -> None:
        super().__init__(llama=True)

    async def list_models(self, request: Request) -> Response:
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in CUT]
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        model = body["model"]

        async def stream() -> AsyncIterator[str]:
            yield openai_chunk(model, {"role": "assistant", "content": ""})
            for token in tokens_of(CUT[model]):
                yield openai_chunk(model, {"content": token})
            yield openai_chunk(model, {}, "length")
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")


@pytest.fixture(scope="module")
async def local_agents(infra: Any, events_address: str) -> AsyncIterator[Any]:
    fake = CuttingLlama()
    await fake.start()
    settings = infra.settings(
        EVENTS_ADDRESS=events_address,
        LOCAL_MODEL_URL=f"{fake.url}/v1",
        AGENT_WORKERS=1,
        RUNS_QUEUE_STREAM=f"AMELIA_RUNS_CUT_{uuid.uuid4().hex[:8]}",
    )
    try:
        async with serve_agents(settings) as stub:
            yield stub
    finally:
        await fake.stop()


async def _run(
    stub: agents_pb2_grpc.AgentServiceStub, model: str, tools: list[str]
) -> tuple[S.Run, list[Any]]:
    agent = (
        await stub.CreateAgent(
            S.CreateAgentRequest(
                agent=S.Agent(model=model, retry_attempts=0, max_tokens=7, tools=tools),
                agent_id=f"cut-{uuid.uuid4().hex[:8]}",
            )
        )
    ).agent
    run = await create_run(stub, agent=agent.name, input={"message": "What is 6*7?"})
    events = await collect(stub, run.name, timeout=120)
    done = (await stub.GetRun(S.GetRunRequest(name=run.name))).run
    return done, events


async def test_a_cut_reply_completes_saying_it_was_cut(
    local_agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    run, events = await _run(local_agents, "local:cut-text", [])
    assert types(events)[-1] == "run.completed", data(events, "run.failed")
    assert "".join(tokens(events)) == run.output["message"] == CUT["cut-text"]
    (cut,) = data(events, "run.model.cut")
    assert cut["finish_reason"] == "length" and cut["max_tokens"] == 7
    assert "cut at max_tokens (7)" in cut["message"]
    # Told where a LangGraph or OpenAI user looks too: the node's end and the run's output.
    ends = {e["node"]: e for e in data(events, "run.node.finished")}
    assert ends[cut["node"]]["finish_reason"] == "length", ends
    assert all("finish_reason" not in e for n, e in ends.items() if n != cut["node"]), ends
    assert run.output["finish_reason"] == "length"


async def test_a_tool_call_cut_by_max_tokens_fails_the_run_saying_so(
    local_agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    run, events = await _run(local_agents, "local:cut-call", ["calculator"])
    assert run.status == S.RUN_STATUS_FAILED and types(events)[-1] == "run.failed"
    assert "max_tokens (7) cut the reply in the middle of a tool call" in run.error
    assert "calculator" not in str(run.output)  # no fragment kept as an answer


async def test_an_answer_cut_by_max_tokens_is_its_text_so_far(
    local_agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    run, events = await _run(local_agents, "local:cut-answer", ["calculator"])
    assert types(events)[-1] == "run.completed", data(events, "run.failed")
    assert "".join(tokens(events)) == run.output["message"] == "The capital of"
    assert len(data(events, "run.model.cut")) == 1
