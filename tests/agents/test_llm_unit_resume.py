"""A reply cut mid-way, in process: continued when the server can continue it (the output is the
part shown plus what follows, never doubled, whatever a fresh reply would have been), asked for
again and compared otherwise (a difference says where); the user is told once per outage that
the call is waiting. Also: the `local:` names an agent may use, and the hint a run gives."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from agents_fake_llm import FakeOpenAI

from amelia.v1 import agents_pb2
from amelia_agents import agent_fields
from amelia_agents.llm import ChatChunk, ChatMessage, ChatRequest, ModelError, get_model
from amelia_agents.llm.local_provider import prefilled
from amelia_agents.llm.reconnect import WAITING, Patience, UnreachableModelError, resumed
from amelia_common.errors import InvalidArgumentError
from amelia_common.settings import PACKAGED_LOCAL_MODELS, Settings

SERVER = "local: the local model server at http://127.0.0.1:9/v1"
FAST = Patience(window=5, backoff=0.01)


def script(texts: list[str | None], calls: list[str]) -> AsyncIterator[ChatChunk]:
    """A try streaming `texts`; None is the connection dropping there."""

    async def attempt() -> AsyncIterator[ChatChunk]:
        for text in texts:
            if text is None:
                raise UnreachableModelError("local: cannot reach the server: Connection error.")
            yield ChatChunk(text=text)

    calls.append("".join(t or "" for t in texts))
    return attempt()


def tries(*scripts: list[str | None]) -> tuple[Callable[[], AsyncIterator[ChatChunk]], list[str]]:
    remaining, calls = list(scripts), []  # type: list[list[str | None]], list[str]
    return (lambda: script(remaining.pop(0), calls)), calls


async def chunks(stream: AsyncIterator[ChatChunk]) -> list[ChatChunk]:
    return [c async for c in stream]


async def test_a_cut_reply_is_continued_not_asked_for_again() -> None:
    attempt, fresh = tries(["Hello", " wor", None], ["Goodbye, a different reply."])
    asked: list[str] = []

    async def continuation(shown: str) -> AsyncIterator[ChatChunk] | None:
        asked.append(shown)
        return script(["ld", ", sea."], [])

    out = await chunks(resumed(attempt, SERVER, FAST, continuation=continuation))
    assert "".join(c.text for c in out) == "Hello world, sea."
    assert asked == ["Hello wor"]  # given exactly what was shown
    assert len(fresh) == 1  # the first try only: the reply was not asked for again


async def test_without_a_continuation_a_new_reply_is_compared() -> None:
    attempt, _ = tries(["Hello", " wor", None], ["Hello world, sea."])

    async def cannot(shown: str) -> AsyncIterator[ChatChunk] | None:
        return None  # e.g. a server that is not llama.cpp

    out = await chunks(resumed(attempt, SERVER, FAST, continuation=cannot))
    assert "".join(c.text for c in out) == "Hello world, sea."


async def test_a_difference_says_where_the_replies_part() -> None:
    attempt, _ = tries(["The bicycle was ", "invented in 1817", None], ["The bicycle was first"])
    with pytest.raises(ModelError) as caught:
        await chunks(resumed(attempt, SERVER, FAST))
    message = str(caught.value)
    assert "differs from the 32 characters already streamed at character 16" in message
    assert "'The bicycle was invented in 1817' became 'The bicycle was first'" in message


async def test_the_user_is_told_once_when_a_wait_starts() -> None:
    attempt, _ = tries(["Hel", None], [None], [None], ["Hello."], [])
    out = await chunks(resumed(attempt, SERVER, FAST))
    events = [c.event for c in out if c.event is not None]
    assert len(events) == 1
    kind, data = events[0]
    assert kind == WAITING
    assert data["server"] == SERVER and data["seconds"] == 5
    assert "Connection error." in data["error"]
    assert data["message"].startswith(f"{SERVER} is unreachable (")
    assert data["message"].endswith("trying again for up to 5s (LLM_RECONNECT_SECONDS)")
    assert "".join(c.text for c in out) == "Hello."


def test_the_text_shown_becomes_the_start_of_the_assistants_reply() -> None:
    request = ChatRequest(messages=[ChatMessage(role="user", content="hi")])
    assert prefilled(request, "") is request
    assert prefilled(request, "Hel").messages[-1] == ChatMessage(role="assistant", content="Hel")
    # A request already ending with the assistant's start (llama.cpp continues it): joined.
    started = ChatRequest(messages=[*request.messages, ChatMessage("assistant", "Sure: ")])
    assert prefilled(started, "Hel").messages[1:] == [ChatMessage("assistant", "Sure: Hel")]


def _model(value: str, **settings: Any) -> str:
    agent = agents_pb2.Agent(model=value)
    found = agent_fields.values(agent, ["model"], Settings(_env_file=None, **settings))  # type: ignore[call-arg]
    return str(found["model"])


@pytest.mark.parametrize(
    "name", [*PACKAGED_LOCAL_MODELS, "{tmp}/mistral-7b.Q4_K_M.gguf", "phi-3.gguf"]
)
def test_a_local_model_amelia_up_can_serve_is_accepted(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative path is the service's folder's
    name = name.format(tmp=tmp_path)
    if name.endswith(".gguf"):  # a path must be a GGUF file there is (test_llm_local_paths)
        Path(name).write_bytes(b"GGUF\x03\x00\x00\x00")
    assert _model(f"local:{name}") == f"local:{name}"


def test_a_local_model_no_one_can_serve_is_refused_naming_those_that_can() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        _model("local:nonexistent-model")
    message = str(caught.value)
    assert message.startswith("model 'local:nonexistent-model': the local model server serves ")
    assert all(f"'local:{name}'" in message for name in PACKAGED_LOCAL_MODELS)
    assert "path/to/model.gguf" in message
    # A server of the user's own serves names only it knows: the run asks it.
    assert _model("local:llama3.1", LOCAL_MODEL_URL="http://127.0.0.1:1/v1") == "local:llama3.1"


@pytest.mark.parametrize("name", ["nonexistent-model", "qwen2.5-coder-1.5b"])
async def test_a_run_names_only_a_model_that_can_be_served(name: str) -> None:
    server = FakeOpenAI(llama=True)
    await server.start()
    try:
        settings = Settings(_env_file=None, LOCAL_MODEL_URL=f"{server.url}/v1")  # type: ignore[call-arg]
        model = get_model(f"local:{name}", settings)
        request = ChatRequest(messages=[ChatMessage(role="user", content="hi")])
        with pytest.raises(ModelError) as caught:
            await chunks(model.stream(request))
    finally:
        await server.stop()
    message = str(caught.value)
    assert f"not '{name}'" in message and "ask for local:tokens" in message
    # The served name first, the file it was loaded from last (QA s25: advice named the path).
    assert "serves 'tokens', 'transcript'" in message and "/models/tokens.gguf'" in message
    assert (f"LOCAL_MODEL={name}" in message) == (name in PACKAGED_LOCAL_MODELS)


def test_an_explicit_max_tokens_is_honoured_above_the_local_default() -> None:
    """LOCAL_MODEL_MAX_TOKENS is the default for a `local:` agent, not a cap: asked for more,
    the user gets it (docs/agents.md)."""
    settings = Settings(_env_file=None, LOCAL_MODEL_MAX_TOKENS=1024)  # type: ignore[call-arg]
    for asked, stored in ((0, 1024), (3000, 3000)):
        agent = agents_pb2.Agent(model="local:qwen2.5-coder-0.5b", max_tokens=asked)
        assert agent_fields.values(agent, ["max_tokens"], settings)["max_tokens"] == stored
