"""Agents with tools: the model asks for a tool, the run shows the call and its result, the
result goes back to the model (through the real Anthropic and OpenAI SDKs, against fake servers
speaking their tool-use wire formats), and the model's final answer uses it."""

from __future__ import annotations

import grpc
import pytest
from agents_fake_llm import TOOL_PREAMBLE
from agents_helpers import S, collect, create_run, data, rpc_error, tokens, types, wait_status

from amelia_agents.tools import MAX_TOOL_ROUNDS, TOOLS, ToolError, calculate
from amelia_common.eventlog import event_data


async def _agent(stub, agent_id: str, model: str, tools: list[str]) -> str:
    agent = S.Agent(model=model, system_prompt="You use tools.", tools=tools)
    created = await stub.CreateAgent(S.CreateAgentRequest(agent=agent, agent_id=agent_id))
    assert list(created.agent.tools) == tools
    return created.agent.name


def _tool_events(events) -> list[tuple[str, dict]]:
    """The run.tool.called / run.tool.result events, in order, with their data."""
    kinds = ("run.tool.called", "run.tool.result")
    return [(e.type, event_data(e)) for e in events if e.type in kinds]


async def test_anthropic_agent_calls_the_calculator(agents, fake_anthropic) -> None:
    name = await _agent(agents, "tools-anthropic", "anthropic:tool-calculator-a", ["calculator"])
    run = await create_run(agents, agent=name, input={"message": "What is 6 times 7?"})
    events = await collect(agents, run.name)
    tool_events = _tool_events(events)
    assert [t for t, _ in tool_events] == ["run.tool.called", "run.tool.result"]
    called, result = tool_events[0][1], tool_events[1][1]
    assert called["tool"] == "calculator" and called["args"] == {"expression": "6*7"}
    assert called["call_id"].startswith("toolu_fake_")
    assert result == {**result, "tool": "calculator", "call_id": called["call_id"], "result": "42"}
    assert "error" not in result

    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == f"{TOOL_PREAMBLE}The tool said: 42."
    assert "".join(tokens(events)) == done.output["message"]
    assert done.usage.input_tokens == 2 * 25  # both model calls count

    first, second = [
        r["body"] for r in fake_anthropic.requests if r["body"]["model"] == "tool-calculator-a"
    ]
    assert first["tools"][0]["name"] == "calculator"
    assert first["tools"][0]["input_schema"] == TOOLS["calculator"].parameters
    assert second["messages"][0] == {"role": "user", "content": "What is 6 times 7?"}
    assert second["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": TOOL_PREAMBLE},
            {
                "type": "tool_use",
                "id": called["call_id"],
                "name": "calculator",
                "input": {"expression": "6*7"},
            },
        ],
    }
    assert second["messages"][2] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": called["call_id"],
                "content": "42",
                "is_error": False,
            }
        ],
    }


async def test_openai_agent_calls_the_calculator(agents, fake_openai) -> None:
    model = f"openai:tool-calculator-o@{fake_openai.url}/v1"
    name = await _agent(agents, "tools-openai", model, ["calculator", "current_time"])
    run = await create_run(agents, agent=name, input={"message": "What is 6 times 7?"})
    events = await collect(agents, run.name)
    tool_events = _tool_events(events)
    assert [t for t, _ in tool_events] == ["run.tool.called", "run.tool.result"]
    called, result = tool_events[0][1], tool_events[1][1]
    assert (called["tool"], called["args"]) == ("calculator", {"expression": "6*7"})
    assert called["call_id"].startswith("call_fake_")
    assert (result["call_id"], result["result"]) == (called["call_id"], "42")

    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == "The tool said: 42."
    assert "".join(tokens(events)) == done.output["message"]
    assert done.usage.input_tokens == 2 * 11

    first, second = [
        r["body"] for r in fake_openai.requests if r["body"]["model"] == "tool-calculator-o"
    ]
    assert [t["function"]["name"] for t in first["tools"]] == ["calculator", "current_time"]
    assert first["tools"][0]["type"] == "function"
    assert first["tools"][0]["function"]["parameters"] == TOOLS["calculator"].parameters
    assistant, tool = second["messages"][-2:]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"] == [
        {
            "id": called["call_id"],
            "type": "function",
            "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'},
        }
    ]
    assert tool == {"role": "tool", "tool_call_id": called["call_id"], "content": "42"}


async def test_offline_scripted_tool_mode(agents) -> None:
    model = 'offline:tool:calculator:{"expression": "2**10 + 1"}'
    name = await _agent(agents, "tools-offline", model, ["calculator"])
    run = await create_run(agents, agent=name, input={"message": "compute"})
    events = await collect(agents, run.name)
    tool_events = _tool_events(events)
    assert [t for t, _ in tool_events] == ["run.tool.called", "run.tool.result"]
    assert tool_events[0][1]["args"] == {"expression": "2**10 + 1"}
    assert tool_events[1][1]["result"] == "1025"
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == "1025"
    assert "".join(tokens(events)) == "1025"


async def test_a_tool_error_goes_to_the_model_and_the_run_completes(agents, fake_anthropic) -> None:
    name = await _agent(agents, "tools-error", "anthropic:tool-error-a", ["calculator"])
    run = await create_run(agents, agent=name, input={"message": "divide by zero"})
    events = await collect(agents, run.name)
    assert types(events)[-1] == "run.completed"
    result = data(events, "run.tool.result")[0]
    assert result["error"] == "division by zero" and "result" not in result
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == f"{TOOL_PREAMBLE}The tool said: error: division by zero."
    second = [r["body"] for r in fake_anthropic.requests if r["body"]["model"] == "tool-error-a"][1]
    block = second["messages"][-1]["content"][0]
    assert block["type"] == "tool_result" and block["is_error"] is True
    assert block["content"] == "error: division by zero"


async def test_a_model_that_keeps_asking_for_tools_fails_the_run(agents) -> None:
    name = await _agent(agents, "tools-forever", "anthropic:tool-forever-a", ["calculator"])
    run = await create_run(agents, agent=name, input={"message": "loop"})
    events = await collect(agents, run.name)
    assert types(events)[-1] == "run.failed"
    assert len(data(events, "run.tool.result")) == MAX_TOOL_ROUNDS
    done = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    assert f"after {MAX_TOOL_ROUNDS} rounds of tool calls" in done.error


async def test_unknown_tools_are_invalid_argument(agents) -> None:
    agent = S.Agent(model="offline:echo", tools=["calculator", "teleport"])
    error = await rpc_error(
        agents.CreateAgent(S.CreateAgentRequest(agent=agent, agent_id="tools-unknown"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "teleport" in error.details()
    assert "calculator, current_time, search_documents" in error.details()

    name = await _agent(agents, "tools-update", "offline:echo", [])
    update = S.Agent(name=name, tools=["nope"])
    error = await rpc_error(
        agents.UpdateAgent(S.UpdateAgentRequest(agent=update, update_mask=["tools"]))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope" in error.details()


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("6*7", 42),
        ("(1 + 2) / 4", 0.75),
        ("-2**3 % 5", 2),
        ("sqrt(16) + max(1, pi)", 4 + 3.141592653589793),
    ],
)
def test_calculator_computes(expression: str, value: float) -> None:
    assert calculate(expression) == pytest.approx(value)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "unsupported syntax"),
        ("(1).__class__", "unsupported syntax"),
        ("9**9**9", "too large"),
        ("2**100000", "too large"),
        ("1/0", "division by zero"),
        ("'a' * 3", "only numbers"),
        ("1 +", "not an arithmetic expression"),
        ("(-8) ** 0.5", "not a real number"),
    ],
)
def test_calculator_refuses(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        calculate(expression)


def test_parallel_tool_results_go_back_in_one_anthropic_user_message() -> None:
    from amelia_agents.llm import ChatMessage, ToolCall
    from amelia_agents.llm.anthropic_provider import to_messages

    calls = (ToolCall("a", "calculator", {"expression": "1"}), ToolCall("b", "current_time", {}))
    sent = to_messages(
        [
            ChatMessage("user", "hi"),
            ChatMessage("assistant", "", tool_calls=calls),
            ChatMessage("tool", "1", tool_call_id="a"),
            ChatMessage("tool", "error: boom", tool_call_id="b", is_error=True),
        ]
    )
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [b["type"] for b in sent[1]["content"]] == ["tool_use", "tool_use"]
    assert [(b["tool_use_id"], b["is_error"]) for b in sent[2]["content"]] == [
        ("a", False),
        ("b", True),
    ]
