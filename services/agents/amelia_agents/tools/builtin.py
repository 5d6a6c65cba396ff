"""The built-in tools an agent may name: `calculator` (arithmetic, parsed with `ast`, never
`eval`), `current_time` (UTC) and `search_documents` (the RAG service's `Search` over gRPC,
like the chat graph's `retrieve`; the agents service never imports the rag package)."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from amelia_agents import retrieval, runtime
from amelia_agents.tools.base import Tool, ToolError

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


def named(names: Sequence[str]) -> dict[str, Tool]:
    """The built-in tools `names` (an agent's), in order; a NodeError (the run fails saying so)
    for a name this worker does not know."""
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise runtime.NodeError(
            f"tools: this worker does not know the agent's tools {unknown} "
            f"(known: {', '.join(sorted(TOOLS))})"
        )
    return {n: TOOLS[n] for n in names}
