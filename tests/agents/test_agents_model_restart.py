"""A model server killed in the middle of a reply and started again on its port: the run waits
for it, and its output is the whole reply, once (llm.reconnect). Also: a server that stays away
fails the call after LLM_RECONNECT_SECONDS with an error naming the provider as the user wrote
it and the server's URL."""

from __future__ import annotations

import asyncio

import pytest
from agents_helpers import S, data, killed_mid_reply, tokens, types, wait_status

from amelia_agents.llm import ChatMessage, ChatRequest, ModelError, get_model
from amelia_common.embedded import free_port
from amelia_common.settings import Settings

# The fake's `slow` model: 200 tokens, 100 ms apart.
SLOW_REPLY = "".join(f"t{i} " for i in range(200))


@pytest.mark.parametrize("attempt", range(3))
async def test_a_model_server_restarted_mid_reply_leaves_the_output_whole(
    agents, attempt: int
) -> None:
    port = free_port()
    agent = S.Agent(model=f"openai:slow@http://127.0.0.1:{port}/v1", retry_attempts=0)
    name, events = await killed_mid_reply(agents, agent, port, 5 + attempt * 7, pause=3.0)
    assert types(events)[-1] == "run.completed", data(events, "run.failed")
    assert "".join(tokens(events)) == SLOW_REPLY
    done = await wait_status(agents, name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == SLOW_REPLY


async def test_a_local_model_server_that_stays_away_fails_naming_it(infra: object) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        LOCAL_MODEL_URL=url, LLM_RECONNECT_SECONDS=1.5, LLM_RETRY_BACKOFF_SECONDS=0.1
    )
    model = get_model("local:qwen2.5-coder-0.5b", settings)
    request = ChatRequest(messages=[ChatMessage(role="user", content="hi")])
    started = asyncio.get_running_loop().time()
    with pytest.raises(ModelError) as caught:
        async for _ in model.stream(request):
            pass
    waited = asyncio.get_running_loop().time() - started
    message = str(caught.value)
    assert message.startswith("local: the local model server at ")
    assert url in message and "did not answer" in message and "openai" not in message
    assert message.endswith(
        "'amelia up' starts it (LOCAL_MODEL), or set LOCAL_MODEL_URL to a running llama.cpp server"
    )
    assert waited >= 1.5  # it was tried again for LLM_RECONNECT_SECONDS, not failed at once
