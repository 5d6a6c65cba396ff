"""The conversation state the model workflows share, their common helpers, and `echo`.

Workflows share one conversation state (`messages`, appended to), so runs in a thread see the
earlier runs' messages whatever the workflow. `chat` (and the hidden `agent` graph) live in
`chat.py`, `plan` in `plan.py`, `code` in `code.py`.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.graph import StateGraph

from amelia_agents import runtime
from amelia_agents.runtime import current
from amelia_agents.workflows.registry import MODEL_FORMAT, Workflow, linear_graph, register


class ConversationState(TypedDict, total=False):
    """A thread's memory: every message of every run, in order."""

    messages: Annotated[list[dict[str, Any]], operator.add]
    # The current run's input, for nodes that need more than the message.
    request: dict[str, Any]


MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string", "minLength": 1}},
}


def message_to_state(value: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": value["message"]}], "request": value}


def last_reply(state: dict[str, Any]) -> dict[str, Any]:
    replies = [m for m in state.get("messages", []) if m.get("role") == "assistant"]
    return {"message": replies[-1]["content"] if replies else ""}


# echo --------------------------------------------------------------------------------------


async def echo_node(state: ConversationState) -> dict[str, Any]:
    """Stream the message back, token by token, through the offline provider."""
    request = state.get("request", {})
    delay = int(request.get("delay_ms", 0))
    model = "offline:echo" + (f"?delay_ms={delay}" if delay else "")
    result = await runtime.chat(state.get("messages", []), model=model)
    return {"messages": [{"role": "assistant", "content": result.text}]}


def build_echo(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    return linear_graph(ConversationState, ("echo", echo_node))


# shared by the model workflows --------------------------------------------------------------


def model_params(agent: dict[str, Any] | None, request: dict[str, Any]) -> dict[str, Any]:
    """The model call's parameters: the agent's, else the request's, else the defaults."""
    settings = current().settings
    source = agent or request
    return {
        "model": str(source.get("model") or settings.DEFAULT_MODEL),
        "system": str(source.get("system_prompt") or ""),
        "temperature": float(
            settings.DEFAULT_TEMPERATURE
            if source.get("temperature") is None
            else source["temperature"]
        ),
        "max_tokens": int(source.get("max_tokens") or settings.DEFAULT_MAX_TOKENS),
    }


# Input fields every model workflow accepts (when run without an agent).
MODEL_PROPERTIES: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1, "format": MODEL_FORMAT},
    "system_prompt": {"type": "string"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    # At most what an agent's max_tokens (an int32) holds: a larger one was taken and failed on
    # the worker (QA s25); one the model's context cannot hold fails the run, saying so.
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
}


register(
    Workflow(
        name="echo",
        description="Streams the message back token by token (offline; for trying the mesh).",
        nodes=["echo"],
        build=build_echo,
        to_state=message_to_state,
        to_output=last_reply,
        input_schema={
            **MESSAGE_SCHEMA,
            "properties": {
                **MESSAGE_SCHEMA["properties"],
                "delay_ms": {"type": "integer", "minimum": 0, "maximum": 10_000},
            },
        },
        default_timeout=60.0,
    )
)
