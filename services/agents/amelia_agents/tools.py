"""Built-in tools an agent may call, and the tool-calling loop of an agent's reply.

An agent names its tools (`Agent.tools`, checked at CreateAgent/UpdateAgent against `TOOLS`).
`chat_with_tools` sends their definitions (name, description, JSON-Schema parameters) with the
model call; when the model asks for tool calls it publishes `run.tool.called`, runs each tool,
publishes `run.tool.result`, appends the results to the conversation and calls the model again,
for at most `MAX_TOOL_ROUNDS` rounds. A tool that fails gives the model an error result (the
model can say so or try again); it does not fail the run.

Tools run inside the node's task, so cancelling or timing out the run stops them too. The loop
lives in one checkpointed node: a worker that dies mid-loop re-runs the whole node on the next
pick-up (the model is asked again and tools run again), so tools should be safe to repeat — the
built-ins only read.

Built-ins: `calculator` (arithmetic, parsed with `ast`, never `eval`), `current_time` (UTC) and
`search_documents` (the RAG service's `Search` over gRPC, like `retrieve`; the agents service
never imports the rag package).
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import operator
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from amelia_agents import runtime
from amelia_agents.llm import ChatMessage, ChatResult, ToolCall, ToolSpec, Usage

MAX_TOOL_ROUNDS = 8
# What a tool result may weigh, in the conversation sent to the model and in its event.
MAX_RESULT_CHARS = 16 * 1024
MAX_ARGS_EVENT_CHARS = 4 * 1024
TOOL_TIMEOUT_SECONDS = 60.0


class ToolError(Exception):
    """A tool's failure, worded for the model (it gets `error: <message>` as the result)."""


class ToolRoundsExceededError(runtime.NodeError):
    """The model still asked for tools after the last round allowed."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any]], Awaitable[Any]]
    timeout: float = TOOL_TIMEOUT_SECONDS

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)


# calculator ---------------------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 500
MAX_INT_BITS = 4096  # bounds big-integer work (10**1000 is fine, 9**9**9 is refused)

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "sqrt": math.sqrt,
    "min": min,
    "max": max,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def _too_big(value: Any) -> bool:
    return isinstance(value, int) and value.bit_length() > MAX_INT_BITS


def _binary(op: ast.operator, left: Any, right: Any) -> Any:
    if isinstance(op, ast.Pow):
        if isinstance(right, int | float) and abs(right) > 10_000:
            raise ToolError("exponent too large")
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and left.bit_length() * right > MAX_INT_BITS
        ):
            raise ToolError("result too large")
    if (
        isinstance(op, ast.Mult)
        and isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right.bit_length() > MAX_INT_BITS
    ):
        raise ToolError("result too large")
    return _BINARY[type(op)](left, right)


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        value = _binary(node.op, _evaluate(node.left), _evaluate(node.right))
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _UNARY[type(node.op)](_evaluate(node.operand))
    elif isinstance(node, ast.Name) and node.id in _CONSTANTS:
        value = _CONSTANTS[node.id]
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        value = _FUNCTIONS[node.func.id](*(_evaluate(a) for a in node.args))
    else:
        allowed = ", ".join([*_FUNCTIONS, *_CONSTANTS])
        raise ToolError(
            f"unsupported syntax {ast.unparse(node)!r}: use numbers, + - * / // % **, "
            f"parentheses and {allowed}"
        )
    if _too_big(value):
        raise ToolError("result too large")
    return value


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression without `eval`: only numbers, operators, parentheses
    and a few functions get through the syntax tree walk."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {exc.msg}") from None
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except (OverflowError, ValueError, TypeError) as exc:
        raise ToolError(f"cannot compute {expression!r}: {exc}") from None
    if isinstance(value, complex) or not isinstance(value, int | float):
        raise ToolError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    return value


def _string_arg(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ToolError(f"argument {name!r} must be a non-empty string")
    return value


async def _calculator(args: dict[str, Any]) -> Any:
    return calculate(_string_arg(args, "expression"))


async def _current_time(_args: dict[str, Any]) -> Any:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# search_documents ---------------------------------------------------------------------------

MAX_TOP_K = 50


async def _search_documents(args: dict[str, Any]) -> Any:
    # Imported here: retrieval imports `runtime`, as this module does, and stays optional.
    from amelia_agents.workflows import retrieval

    query = _string_arg(args, "query")
    top_k = args.get("top_k")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K
    ):
        raise ToolError(f"argument 'top_k' must be an integer from 1 to {MAX_TOP_K}")
    agent = runtime.current().agent or {}
    # An agent with context_sources searches those; otherwise every document.
    sources = list(agent.get("context_sources") or []) or [retrieval.ALL_DOCUMENTS]
    passages = await retrieval.retrieve(query, sources, top_k)
    return {
        "passages": [
            {
                "index": p["index"],
                "document": p["document"],
                "document_title": p["document_title"],
                "start_offset": p["start_offset"],
                "end_offset": p["end_offset"],
                "page": p["page"],
                "score": p["score"],
                "content": p["content"],
            }
            for p in passages
        ]
    }


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            name="calculator",
            description=(
                "Evaluates an arithmetic expression exactly: numbers, + - * / // % ** and "
                "parentheses, functions abs, round, sqrt, min, max and constants pi, e. "
                "Returns the number."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "description": "The expression, e.g. '(3 + 4) * 6'.",
                    }
                },
                "required": ["expression"],
            },
            run=_calculator,
        ),
        Tool(
            name="current_time",
            description="The current date and time in UTC, as ISO 8601 (e.g. 2025-01-31T12:00:00Z).",
            parameters={"type": "object", "properties": {}},
            run=_current_time,
        ),
        Tool(
            name="search_documents",
            description=(
                "Searches the user's documents (the agent's context sources, or all of them) "
                "and returns the best passages with their document, title, character offsets, "
                "page and score."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for."},
                    "top_k": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_TOP_K,
                        "description": "How many passages (default: the service's RAG_TOP_K).",
                    },
                },
                "required": ["query"],
            },
            run=_search_documents,
        ),
    )
}


def check_tools(names: Sequence[str]) -> list[str]:
    """The names without duplicates, or ValueError naming the unknown ones and the known ones."""
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise ValueError(f"unknown tools {unknown}; known tools: {', '.join(sorted(TOOLS))}")
    return list(dict.fromkeys(names))


# the loop -------------------------------------------------------------------------------------


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


async def chat_with_tools(
    messages: Sequence[Mapping[str, Any] | ChatMessage],
    tool_names: Sequence[str],
    *,
    model: str,
    system: str = "",
    temperature: float | None = None,
    max_tokens: int = 1024,
) -> ChatResult:
    """A model reply that may use `tool_names`: model call, tool calls, model call, … until the
    model answers without asking for a tool (at most `MAX_TOOL_ROUNDS` rounds of tools).

    Every round's tokens stream as `run.token`; the reply's text is the concatenation of every
    round's text (what the user saw streamed) and its usage the sum of the calls'.
    """
    unknown = [n for n in tool_names if n not in TOOLS]
    if unknown:
        raise runtime.NodeError(
            f"tools: this worker does not know the agent's tools {unknown} "
            f"(known: {', '.join(sorted(TOOLS))})"
        )
    return await tool_loop(
        messages,
        {n: TOOLS[n] for n in tool_names},
        model=model,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
    )


async def tool_loop(
    messages: Sequence[Mapping[str, Any] | ChatMessage],
    tools: Mapping[str, Tool],
    *,
    model: str,
    system: str = "",
    temperature: float | None = None,
    max_tokens: int = 1024,
    max_rounds: int = MAX_TOOL_ROUNDS,
) -> ChatResult:
    """`chat_with_tools` with any tools (a workflow's own, e.g. the developer's) and rounds
    limit; past it, `ToolRoundsExceededError`."""
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
