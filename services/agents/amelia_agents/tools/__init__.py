"""Tools a model may call during a run: what a tool is (`base`), the tool-calling loop (`loop`)
and the built-in tools an agent names (`builtin`, checked at CreateAgent/UpdateAgent against
`TOOLS`). The loop knows no tool and the tools know no loop; this package puts them together
for an agent's reply (`chat_with_tools`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from amelia_agents.llm import ChatMessage, ChatResult
from amelia_agents.tools.base import TOOL_TIMEOUT_SECONDS, Tool, ToolError
from amelia_agents.tools.builtin import TOOLS, calculate, check_tools, named
from amelia_agents.tools.loop import (
    MAX_TOOL_ROUNDS,
    ToolRoundsExceededError,
    run_tool_call,
    tool_loop,
)


async def chat_with_tools(
    messages: Sequence[Mapping[str, Any] | ChatMessage],
    tool_names: Sequence[str],
    *,
    model: str,
    system: str = "",
    temperature: float | None = None,
    max_tokens: int = 1024,
    context: Sequence[str] = (),
) -> ChatResult:
    """An agent's reply with the built-in tools it names (see `loop.tool_loop`)."""
    return await tool_loop(
        messages,
        named(tool_names),
        model=model,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        context=context,
    )


__all__ = [
    "MAX_TOOL_ROUNDS",
    "TOOLS",
    "TOOL_TIMEOUT_SECONDS",
    "Tool",
    "ToolError",
    "ToolRoundsExceededError",
    "calculate",
    "chat_with_tools",
    "check_tools",
    "named",
    "run_tool_call",
    "tool_loop",
]
