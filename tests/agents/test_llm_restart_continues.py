"""A local model server killed in the middle of a reply and started again gives a DIFFERENT reply
from scratch (as a llama.cpp server answering from a reused prompt cache can): the run continues
the reply instead of asking for it again, and completes with the part streamed before the kill
followed by the continuation, each token once. The run tells the user, once, that it is
waiting. A server that cannot continue (OpenAI's API has no prefill) is still asked again: its
different reply fails the run saying where the two part.

The fake server (tests/agents_fake_llm.py, `drift` model, llama.cpp's prefill) runs in a process
of its own so that it can be SIGKILLed; the agents service is one of the test's own, with
LOCAL_MODEL_URL at the fake and a run queue of its own."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from agents_fake_llm import DRIFT_TOKENS
from agents_helpers import S, data, killed_mid_reply, local_model_agents, tokens, types, wait_status

from amelia.v1 import agents_pb2_grpc
from amelia_common.embedded import free_port

TOKEN = re.compile(r"w(\d+)-(\w+) ")


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def local_agents(
    infra: object, events_address: str, port: int
) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    url = f"http://127.0.0.1:{port}/v1"
    make_settings = infra.settings  # type: ignore[attr-defined]
    async with local_model_agents(
        make_settings, events_address, url, "LLM", RUN_ACK_WAIT_SECONDS=30
    ) as stub:
        yield stub


@pytest.mark.parametrize("attempt", range(3))
async def test_a_restarted_local_server_continues_the_reply(
    local_agents: agents_pb2_grpc.AgentServiceStub, port: int, attempt: int
) -> None:
    name, events = await killed_mid_reply(
        local_agents, _agent("local:drift"), port, 5 + attempt * 9, llama=True
    )
    assert types(events)[-1] == "run.completed", data(events, "run.failed")
    output = "".join(tokens(events))
    found = TOKEN.findall(output)
    assert TOKEN.sub("", output) == ""  # nothing but whole tokens
    # Every token once, in order: the part before the kill, then the continuation, never doubled.
    assert [int(i) for i, _ in found] == list(range(DRIFT_TOKENS))
    # Written by two servers: the restarted one's reply from scratch would have differed.
    tags = list(dict.fromkeys(tag for _, tag in found))
    assert len(tags) == 2
    waiting = data(events, "run.model.waiting")
    assert len(waiting) == 1
    assert waiting[0]["server"] == f"local: the local model server at http://127.0.0.1:{port}/v1"
    assert waiting[0]["seconds"] == 30 and waiting[0]["message"]
    done = await wait_status(local_agents, name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == output


async def test_a_server_without_prefill_is_asked_again_and_a_different_reply_fails(
    local_agents: agents_pb2_grpc.AgentServiceStub, port: int
) -> None:
    model = f"openai:drift@http://127.0.0.1:{port}/v1"
    _, events = await killed_mid_reply(local_agents, _agent(model), port, 5)
    assert types(events)[-1] == "run.failed"
    error = data(events, "run.failed")[0]["error"]
    assert "differs from the" in error and "characters already streamed at character " in error
    assert len(data(events, "run.model.waiting")) == 1


def _agent(model: str) -> S.Agent:
    """An agent of `model` that neither retries a failed call nor stops the reply early."""
    return S.Agent(model=model, retry_attempts=0, max_tokens=2000)
