"""A local llama.cpp server counts a long prompt's tokens itself (`/tokenize`), so the prompt is
fitted to its window at the tokenizer's real density on the first try — no refusal and second
request, even for text far denser than the rule of thumb; a prompt that fits however dense it
is costs no count at all.

The server is `FakeOpenAI(llama=True)` with `/tokenize` counting one token a character, as its
`transcript-dense` model's prompts are counted (tests/agents_fake_llm.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from agents_fake_llm import FakeOpenAI, llama_prompt_tokens
from agents_helpers import S, local_model_agents
from test_agents_context_window import _turn

from amelia.v1 import agents_pb2_grpc

MODEL = "local:transcript-dense"


@pytest.fixture(scope="module")
async def counting(
    infra: object, events_address: str
) -> AsyncIterator[tuple[agents_pb2_grpc.AgentServiceStub, FakeOpenAI]]:
    """The agents service at a fake llama.cpp that counts with `/tokenize`, and that server."""
    server = FakeOpenAI(llama=True, tokenize_chars_per_token=1.0)
    await server.start()
    try:
        make_settings = infra.settings  # type: ignore[attr-defined]
        url = f"{server.url}/v1"
        async with local_model_agents(make_settings, events_address, url, "WINDOWCOUNT") as stub:
            yield stub, server
    finally:
        await server.stop()


async def test_a_dense_prompt_is_fitted_at_the_servers_count_on_the_first_try(
    counting: tuple[agents_pb2_grpc.AgentServiceStub, FakeOpenAI],
) -> None:
    counted_agents, server = counting
    first, _, fitted = await _turn(counted_agents, MODEL, "FIRST " + "a" * 1500)
    assert first.status == S.RUN_STATUS_COMPLETED and fitted == []
    sent, counted = len(server.requests), server.tokenized
    second, kinds, fitted = await _turn(counted_agents, MODEL, "SECOND " + "b" * 1500, first.thread)
    assert second.status == S.RUN_STATUS_COMPLETED, second.error
    # Counted once, fitted once, sent once: the server never refused it.
    assert server.tokenized == counted + 1
    assert len(server.requests) - sent == 1
    answered = server.requests[-1]["body"]
    assert llama_prompt_tokens(answered) < 4096
    assert "FIRST" not in str(answered["messages"]) and "SECOND" in str(answered["messages"])
    assert len(fitted) == 1 and fitted[0]["counted_by_server"] is True
    assert fitted[0]["messages_dropped"] == 2
    # What the server counted: the whole conversation, about a token a character.
    assert fitted[0]["estimated_prompt_tokens"] > 4096
    assert kinds.index("run.context.fitted") < kinds.index("run.token")


async def test_a_prompt_that_fits_however_dense_is_not_counted(
    counting: tuple[agents_pb2_grpc.AgentServiceStub, FakeOpenAI],
) -> None:
    counted_agents, server = counting
    counted = server.tokenized
    run, _, fitted = await _turn(counted_agents, MODEL, "short question")
    assert run.status == S.RUN_STATUS_COMPLETED and fitted == []
    assert server.tokenized == counted
