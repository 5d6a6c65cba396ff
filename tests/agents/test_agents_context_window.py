"""A chat whose prompt is longer than the local model's context is fitted to it instead of being
refused (QA: `request (4366 tokens) exceeds the available context size (4096 tokens)` after
111 s): the oldest exchange is left out, the run says so in a `run.context.fitted` event and
completes. A server whose tokenizer counts far more tokens than the rule of thumb refuses the
first try; its refusal's figures fit the prompt again and the run still completes. A message
that alone does not fit fails the run saying what to do.

The model server is `FakeOpenAI(llama=True)`: llama.cpp's `/props` (n_ctx 4096 per slot) and
its exact 400 for a prompt over it; the agents service is one of the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents_fake_llm import FakeOpenAI, llama_prompt_tokens
from agents_helpers import S, collect, create_run, data, local_model_agents, types, wait_status

from amelia.v1 import agents_pb2_grpc


@pytest.fixture(scope="module")
async def llama() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(llama=True)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def local_agents(
    infra: object, events_address: str, llama: FakeOpenAI
) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    make_settings = infra.settings  # type: ignore[attr-defined]
    async with local_model_agents(
        make_settings, events_address, f"{llama.url}/v1", "WINDOW"
    ) as stub:
        yield stub


async def _turn(
    stub: agents_pb2_grpc.AgentServiceStub, model: str, message: str, thread: str = ""
) -> tuple[S.Run, list[str], list[dict[str, Any]]]:
    run = await create_run(
        stub,
        workflow="workflows/chat",
        thread=thread,
        input={"message": message, "model": model, "max_tokens": 300},
    )
    events = await collect(stub, run.name)
    done = await wait_status(stub, run.name, S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED)
    return done, types(events), data(events, "run.context.fitted")


@pytest.mark.parametrize("model", ["local:transcript", "local:transcript-dense"])
async def test_a_long_conversation_is_fitted_to_the_local_models_context(
    local_agents: agents_pb2_grpc.AgentServiceStub, llama: FakeOpenAI, model: str
) -> None:
    size = 6000 if model == "local:transcript" else 1500
    first, _, fitted = await _turn(local_agents, model, "FIRST " + "a" * size)
    assert first.status == S.RUN_STATUS_COMPLETED and fitted == []
    sent = len(llama.requests)
    second, kinds, fitted = await _turn(local_agents, model, "SECOND " + "b" * size, first.thread)
    assert second.status == S.RUN_STATUS_COMPLETED, second.error
    # Whole, the conversation is over the window: the server would refuse it.
    whole = [m for r in llama.requests[sent:] for m in r["body"]["messages"]]
    assert any("FIRST" in str(m["content"]) for m in whole) == (model.endswith("-dense"))
    assert len(fitted) == 1 and fitted[0]["messages_dropped"] == 2
    assert fitted[0]["context_tokens"] == 4096 and fitted[0]["max_tokens"] == 300
    assert kinds.index("run.context.fitted") < kinds.index("run.token")
    answered = llama.requests[-1]["body"]
    assert llama_prompt_tokens(answered) < 4096
    assert "FIRST" not in str(answered["messages"]) and "SECOND" in str(answered["messages"])
    assert second.output["message"].startswith("user: SECOND")
    if model.endswith("-dense"):  # the rule of thumb was refused once, then fitted, measured
        assert len(llama.requests) - sent == 2


async def test_a_message_longer_than_the_context_fails_saying_what_to_do(
    local_agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    run, _, _ = await _turn(local_agents, "local:transcript-dense", "c" * 5000)
    assert run.status == S.RUN_STATUS_FAILED
    assert "does not fit the model's context of 4096 tokens with max_tokens 300" in run.error
    assert "shorten the system prompt or the message, or lower max_tokens" in run.error
