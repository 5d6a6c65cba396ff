"""The tool-calling loop of a model reply: model call, tool calls, model call, … until the model
answers without asking for a tool, for at most `MAX_TOOL_ROUNDS` rounds.

With the model call go the tools' definitions (name, description, JSON-Schema parameters); for
each call the model asks for, the loop publishes `run.tool.called`, runs the tool, publishes
`run.tool.result` and appends the result to the conversation. A tool that fails gives the model
an error result (the model can say so or try again); it does not fail the run.

Tools run inside the node's task, so cancelling or timing out the run stops them too. The loop
lives in one checkpointed node: a worker that dies mid-loop re-runs the whole node on the next
pick-up (the model is asked again and tools run again), so tools should be safe to repeat — the
built-ins only read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from amelia_agents import runtime
from amelia_agents.llm import ChatMessage, ChatResult, ToolCall, Usage
from amelia_agents.tools.base import Tool, ToolError

MAX_TOOL_ROUNDS = 8
# What a tool result may weigh, in the conversation sent to the model and in its event.
MAX_RESULT_CHARS = 16 * 1024
MAX_ARGS_EVENT_CHARS = 4 * 1024


class ToolRoundsExceededError(runtime.NodeError):
    """The model still asked for tools after the last round allowed."""


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def _args_for_event(arguments: dict[str, Any]) -> Any:
    text = json.dumps(arguments, ensure_ascii=False)
    return arguments if len(text) <= MAX_ARGS_EVENT_CHARS else _cut(text, MAX_ARGS_EVENT_CHARS)


async def run_tool_call(call: ToolCall, tools: Mapping[str, Tool]) -> ChatMessage:
    """Run one call, with its events; the result (or error) as a `tool` message for the model."""
    runtime.emit(
        "run.tool.called",
        {"tool": call.name, "call_id": call.id, "args": _args_for_event(call.arguments)},
    )
    error = ""
    text = ""
    try:
        tool = tools.get(call.name)
        if tool is None:
            raise ToolError(
                f"there is no tool {call.name!r}; available: {', '.join(tools) or 'none'}"
            )
        if "_invalid_json" in call.arguments:
            raise ToolError(
                f"the arguments are not a JSON object: {call.arguments['_invalid_json']}"
            )
        async with asyncio.timeout(tool.timeout):
            value = await tool.run(dict(call.arguments))
        text = _cut(
            value if isinstance(value, str) else json.dumps(value, ensure_ascii=False),
            MAX_RESULT_CHARS,
        )
    except (ToolError, runtime.NodeError) as exc:
        error = str(exc)
    except TimeoutError:
        error = f"the tool took longer than {tools[call.name].timeout:g}s and was stopped"
    except Exception as exc:  # noqa: BLE001 - a tool's bug is the model's error, not the run's
        error = f"{type(exc).__name__}: {exc}"
    if error:
        error = _cut(error, MAX_RESULT_CHARS)
        runtime.emit("run.tool.result", {"tool": call.name, "call_id": call.id, "error": error})
        return ChatMessage(
            role="tool", content=f"error: {error}", tool_call_id=call.id, is_error=True
        )
    runtime.emit("run.tool.result", {"tool": call.name, "call_id": call.id, "result": text})
    return ChatMessage(role="tool", content=text, tool_call_id=call.id)


async def tool_loop(
    messages: Sequence[Mapping[str, Any] | ChatMessage],
    tools: Mapping[str, Tool],
    *,
    model: str,
    system: str = "",
    temperature: float | None = None,
    max_tokens: int = 1024,
    max_rounds: int = MAX_TOOL_ROUNDS,
    context: Sequence[str] = (),
) -> ChatResult:
    """A model reply that may use `tools` (an agent's built-ins, a workflow's own), at most
    `max_rounds` rounds of tool calls; past it, `ToolRoundsExceededError`. `context` as in
    `runtime.chat` (every round's prompt is fitted to the model's window).

    Every round's tokens stream as `run.token`; the reply's text is the concatenation of every
    round's text (what the user saw streamed) and its usage the sum of the calls'.
    """
    specs = [t.spec() for t in tools.values()]
    conversation = [
        m if isinstance(m, ChatMessage) else ChatMessage.from_dict(dict(m)) for m in messages
    ]
    texts: list[str] = []
    usage = Usage()
    for round_ in range(max_rounds + 1):
        result = await runtime.chat(
            conversation,
            model=model,
            system=system,
            temperature=temperature,
            max_tokens=max_tokens,
            tools=specs,
            context=context,
        )
        texts.append(result.text)
        usage.add(result.usage)
        if not result.tool_calls:
            return ChatResult(text="".join(texts), usage=usage, model=result.model)
        if round_ == max_rounds:
            asked = ", ".join(c.name for c in result.tool_calls)
            raise ToolRoundsExceededError(
                f"tools: the model was still asking for tools ({asked}) after "
                f"{max_rounds} rounds of tool calls; the run was stopped"
            )
        conversation.append(
            ChatMessage(role="assistant", content=result.text, tool_calls=tuple(result.tool_calls))
        )
        for call in result.tool_calls:
            conversation.append(await run_tool_call(call, tools))
    raise AssertionError("unreachable")  # pragma: no cover
