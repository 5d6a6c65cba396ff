"""A workflow for the interrupted-usage tests (loaded through AGENT_WORKFLOW_MODULES by the
worker subprocesses): `test-usage-steps` runs nodes a, b and c, each making one model call
(the run's input `model`, a fake OpenAI-compatible server), b after recording that it made its
call and then waiting for the file `release` — so a test can stop b's worker between the two."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import StateGraph

from amelia_agents import runtime
from amelia_agents.workflows import Workflow, register
from amelia_agents.workflows.registry import linear_graph


class UsageState(TypedDict, total=False):
    request: dict[str, Any]
    said: list[str]


def _record(record: Path, node: str) -> None:
    with record.open("a") as f:
        f.write(f"{node} {os.getpid()}\n")


async def _call(state: UsageState, node: str) -> dict[str, Any]:
    """One model call whose reply (`transcript`: the prompt said back) has a length of its own
    per node (a: 3 tokens out, b: 5, c: 7), so each node's share of the run's usage shows."""
    request = state["request"]
    words = {"a": 2, "b": 4, "c": 6}[node]
    result = await runtime.chat(
        [{"role": "user", "content": " ".join([node] * words)}],
        model=str(request["model"]),
    )
    _record(Path(request["record"]), node)
    return {"said": [*state.get("said", []), result.text]}


async def node_a(state: UsageState) -> dict[str, Any]:
    return await _call(state, "a")


async def node_b(state: UsageState) -> dict[str, Any]:
    update = await _call(state, "b")
    release = Path(state["request"]["release"])
    # Polling a file: the test releases the node from another process.
    while not os.path.exists(release):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.05)
    return update


async def node_c(state: UsageState) -> dict[str, Any]:
    return await _call(state, "c")


def build(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    return linear_graph(UsageState, ("a", node_a), ("b", node_b), ("c", node_c))


register(
    Workflow(
        name="test-usage-steps",
        description="test: three nodes with a model call each, b held after its call",
        nodes=["a", "b", "c"],
        build=build,
        to_state=lambda value: {"request": value},
        to_output=lambda state: {"said": len(state.get("said", []))},
        input_schema={"type": "object"},
    ),
    replace=True,
)
