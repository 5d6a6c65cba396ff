"""What a tool is to the tool-calling loop (`tools.loop`), and how it fails; the built-in
tools (`tools.builtin`) and a workflow's own (the developer's `devtools`) are made of these."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from amelia_agents.llm import ToolSpec

TOOL_TIMEOUT_SECONDS = 60.0


class ToolError(Exception):
    """A tool's failure, worded for the model (it gets `error: <message>` as the result)."""


@dataclass(frozen=True)
class Tool(ToolSpec):
    """What the model is told of the tool (its `ToolSpec`), and how to run it."""

    run: Callable[[dict[str, Any]], Awaitable[Any]]
    timeout: float = TOOL_TIMEOUT_SECONDS

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)
