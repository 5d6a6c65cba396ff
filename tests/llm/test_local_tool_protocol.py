"""How `local:` models' tool calls written as text are read, and how their results go back: the
forms a 0.5B model was seen to write are calls, answers are not, and results fold into the
system prompt with the tools withheld (calls llama.cpp parsed itself keep the usual loop)."""

from __future__ import annotations

import pytest

from amelia_agents.llm import ChatMessage, ChatRequest, ToolCall, ToolSpec
from amelia_agents.llm.local_provider import CONTENT_CALL_PREFIX, fold_tool_results, tool_calls_in

CALC = {"expression": "37*12+5"}


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "calculator", "arguments": {"expression": "37*12+5"}}',
        '```json\n{\n  "name": "calculator",\n  "arguments": {"expression": "37*12+5"}\n}\n```',
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "37*12+5"}}\n</tool_call>',
        '{"name": "calculator", "arguments": "{\\"expression\\": \\"37*12+5\\"}"}',
        # A brace dropped at the end, as the model does now and then.
        '{"name": "calculator", "arguments": {"expression": "37*12+5"}',
    ],
)
def test_the_forms_a_small_model_writes_are_tool_calls(text: str) -> None:
    [call] = tool_calls_in(text)
    assert (call.name, call.arguments) == ("calculator", CALC)
    assert call.id.startswith(CONTENT_CALL_PREFIX)


def test_several_calls_in_a_row_are_all_read() -> None:
    calls = tool_calls_in('{"name": "a", "arguments": {}}\n{"name": "b", "arguments": {"x": 1}}')
    assert [(c.name, c.arguments) for c in calls] == [("a", {}), ("b", {"x": 1})]
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        '{"answer": 449}',
        '{"name": "calculator", "arguments": {}} and then I would add five.',
        "```python\nprint(37 * 12 + 5)\n```",
        "",
    ],
)
def test_answers_are_not_tool_calls(text: str) -> None:
    assert tool_calls_in(text) == []


def _exchange(call_id: str) -> list[ChatMessage]:
    call = ToolCall(id=call_id, name="calculator", arguments=CALC)
    return [
        ChatMessage(role="user", content="what is 37*12+5"),
        ChatMessage(role="assistant", content="", tool_calls=(call,)),
        ChatMessage(role="tool", content="449", tool_call_id=call_id),
    ]


def test_results_of_calls_read_from_text_fold_into_the_system_prompt() -> None:
    tools = (ToolSpec("calculator", "arithmetic", {"type": "object"}),)
    request = ChatRequest(
        messages=_exchange(f"{CONTENT_CALL_PREFIX}1"), system="Be brief.", tools=tools
    )
    folded = fold_tool_results(request)
    assert [(m.role, m.content) for m in folded.messages] == [("user", "what is 37*12+5")]
    assert folded.system.startswith("Be brief.\n\nTool results:\n")
    assert 'calculator({"expression": "37*12+5"}) returned 449' in folded.system
    assert folded.tools == ()


def test_a_failed_tool_is_said_to_have_failed() -> None:
    messages = _exchange(f"{CONTENT_CALL_PREFIX}1")
    messages[-1] = ChatMessage(
        role="tool",
        content="error: division by zero",
        tool_call_id=messages[-1].tool_call_id,
        is_error=True,
    )
    folded = fold_tool_results(ChatRequest(messages=messages))
    assert "failed error: division by zero" in folded.system


def test_calls_the_server_parsed_keep_the_usual_tool_loop() -> None:
    request = ChatRequest(
        messages=_exchange("call_abc"),
        tools=(ToolSpec("calculator", "arithmetic", {"type": "object"}),),
    )
    assert fold_tool_results(request) is request
