"""What a `local:` model may answer when tools are offered (llm/local_provider.py): one call of
an offered tool with arguments its parameters accept, or an answer — the schema llama.cpp turns
into a grammar. The replies the 0.5B developer wrote before (a call of the function it was asked
to write, an argument no tool has) are outside it; a call of the developer's tools is inside."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from amelia_agents.llm.local_provider import constrained_reply, reply_schema, tools_prompt
from amelia_agents.workflows.devtools import workspace_tools

ARGUMENTS = {"path": "calc.py", "content": "def f():\n    pass\n"}
WRITE = {"name": "write_file", "arguments": ARGUMENTS}


@pytest.fixture
def schema(tmp_path: Path) -> dict[str, object]:
    return reply_schema([t.spec() for t in workspace_tools(tmp_path).values()])


@pytest.mark.parametrize(
    "reply",
    [
        WRITE,
        {"name": "read_file", "arguments": {"path": "calc.py"}},
        {"name": "list_files", "arguments": {}},
        {"answer": "Added subtract."},
    ],
)
def test_a_call_of_an_offered_tool_or_an_answer_fits(
    schema: dict[str, object], reply: object
) -> None:
    jsonschema.validate(reply, schema)


@pytest.mark.parametrize(
    "reply",
    [
        {"name": "subtract", "arguments": {"a": 5, "b": 3}},  # what the 0.5B model wrote
        {"name": "write_file", "arguments": {"path": "calc.py"}},  # no content
        {"name": "write_file", "arguments": {**ARGUMENTS, "a": 5}},  # not a parameter
        {"name": "write_file", "arguments": {"path": 3, "content": ""}},
        {"answer": "done", "name": "write_file"},
        "done",
    ],
)
def test_anything_else_does_not_fit(schema: dict[str, object], reply: object) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(reply, schema)


def test_a_reply_is_its_call_or_its_answer_text() -> None:
    [call] = constrained_reply(json.dumps(WRITE)).tool_calls or []
    assert (call.name, call.arguments) == ("write_file", ARGUMENTS)
    answer = constrained_reply('{"answer": "Added subtract() and its test."}')
    assert (answer.text, answer.tool_calls) == ("Added subtract() and its test.", None)
    # Cut short by max_tokens: neither, so the text as it is (the model's words, not lost).
    cut = constrained_reply('{"name": "write_file", "arguments": {"path": "ca')
    assert cut.text.startswith('{"name"') and not cut.tool_calls


def test_the_system_prompt_names_every_tool_and_the_two_forms(tmp_path: Path) -> None:
    tools = [t.spec() for t in workspace_tools(tmp_path, test_command="true").values()]
    prompt = tools_prompt(tools)
    for tool in tools:
        assert f"- {tool.name}: " in prompt
    assert '{"name": "<tool>", "arguments"' in prompt and '{"answer": ' in prompt
