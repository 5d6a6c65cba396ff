"""`llm.window.fit`: a prompt longer than the model's window loses, in this order, the
lowest-ranked passages, then tool results (cut, saying so), then the oldest exchanges; never the
system prompt or the current message, and `max_tokens` stays free for the reply (QA: an agent
with document context and `search_documents` was refused by the local model, 4366 > 4096)."""

from __future__ import annotations

import pytest

from amelia_agents.llm import ChatMessage, ChatRequest, ToolCall
from amelia_agents.llm.window import (
    FIT_CHARS_PER_TOKEN,
    PromptTooLongError,
    fit,
    overflow,
    prompt_chars,
)


def _request(*messages: ChatMessage, max_tokens: int = 300) -> ChatRequest:
    return ChatRequest(messages=list(messages), system="Be brief.", max_tokens=max_tokens)


def _exchange(tag: str, size: int) -> list[ChatMessage]:
    return [
        ChatMessage(role="user", content=f"{tag}?" + "q" * size),
        ChatMessage(role="assistant", content=f"{tag}!" + "a" * size),
    ]


def _tool_round(size: int) -> list[ChatMessage]:
    call = ToolCall(id="c1", name="search_documents", arguments={"query": "closures"})
    return [
        ChatMessage(role="assistant", content="", tool_calls=(call,)),
        ChatMessage(role="tool", content="r" * size, tool_call_id="c1"),
    ]


def test_a_prompt_that_fits_is_sent_whole() -> None:
    request = _request(ChatMessage(role="user", content="hello"))
    fitted, note = fit(request, ("[1] a passage",), 4096)
    assert note is None
    assert fitted.system == "Be brief.\n\n[1] a passage"
    assert fitted.messages == request.messages


def test_passages_go_first_lowest_ranked_first() -> None:
    passages = tuple(f"[{i}] " + "p" * 3000 for i in range(1, 6))
    request = _request(*_exchange("old", 500), ChatMessage(role="user", content="now"))
    fitted, note = fit(request, passages, 4096)
    assert note is not None and note["passages_dropped"] == 2
    assert note["tool_results_cut"] == 0 and note["messages_dropped"] == 0
    assert "[3] " in fitted.system and "[4] " not in fitted.system
    assert fitted.messages == request.messages
    budget = (4096 - 300 - 32 - 8 * 4) * FIT_CHARS_PER_TOKEN
    assert prompt_chars(fitted) <= budget


def test_then_tool_results_are_cut_saying_so_then_the_oldest_exchanges() -> None:
    current = ChatMessage(role="user", content="explain closures")
    request = _request(
        *_exchange("first", 2000), *_exchange("second", 2000), current, *_tool_round(20000)
    )
    fitted, note = fit(request, ("[1] " + "p" * 4000,), 4096)
    assert note is not None
    assert note == {
        **note,
        "passages_dropped": 1,
        "tool_results_cut": 1,
        "messages_dropped": 0,
    }
    result = fitted.messages[-1]
    assert result.role == "tool" and "characters cut to fit the model's context" in result.content
    assert fitted.messages[:-1] == request.messages[:-1]
    assert prompt_chars(fitted) <= (4096 - 300 - 32 - 8 * 8) * FIT_CHARS_PER_TOKEN

    # History long enough that cutting the tool result to nothing is not enough.
    request = _request(
        *_exchange("first", 6000), *_exchange("second", 1000), current, *_tool_round(500)
    )
    fitted, note = fit(request, (), 4096)
    assert note is not None and note["messages_dropped"] == 2
    assert fitted.messages[0].content.startswith("second?")
    assert fitted.messages[2] == current


def test_room_for_max_tokens_is_kept_and_a_too_long_message_fails_saying_so() -> None:
    message = ChatMessage(role="user", content="x" * 9000)
    assert fit(_request(message, max_tokens=300), (), 4096)[1] is None
    with pytest.raises(PromptTooLongError, match="lower max_tokens") as refused:
        fit(_request(message, max_tokens=1500), (), 4096)
    assert "context of 4096 tokens with max_tokens 1500" in str(refused.value)


def test_a_servers_refusal_is_read() -> None:
    llama = (
        "local: 400: request (4366 tokens) exceeds the available context size (4096 tokens), "
        "try increasing it"
    )
    assert overflow(RuntimeError(llama)) == (4366, 4096)
    openai_text = (
        "This model's maximum context length is 8192 tokens. However, your messages resulted "
        "in 9000 tokens. Please reduce the length of the messages."
    )
    assert overflow(RuntimeError(openai_text)) == (9000, 8192)
    assert overflow(RuntimeError("local: 400: bad request")) is None
