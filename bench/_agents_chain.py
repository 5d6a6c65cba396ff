"""The agents bench's workflows: chains of N nodes, each a model call to the offline provider.

Importing this module registers them (`bench-chain-1`, `bench-chain-5`), so the agents service
the bench starts as a process of its own loads them through AGENT_WORKFLOW_MODULES, as any
plugin; the bench's process imports it too, for the direct (no mesh) runs of the same graphs.
"""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from amelia_agents import runtime, workflows

LONG = 5  # nodes in the long chain
REPLY = "one two three four five six seven eight"


class ChainState(TypedDict, total=False):
    messages: list[dict[str, Any]]
    request: dict[str, Any]


def build_chain(nodes: int) -> StateGraph[Any, Any, Any, Any]:
    graph = StateGraph(ChainState)

    async def step(state: ChainState) -> dict[str, Any]:
        result = await runtime.chat(state.get("messages", []), model=f"offline:say:{REPLY}")
        return {
            "messages": [*state.get("messages", []), {"role": "assistant", "content": result.text}]
        }

    previous = START
    for i in range(nodes):
        graph.add_node(f"n{i}", step)
        graph.add_edge(previous, f"n{i}")
        previous = f"n{i}"
    graph.add_edge(previous, END)
    return graph


def register(nodes: int) -> str:
    name = f"bench-chain-{nodes}"
    workflows.register(
        workflows.Workflow(
            name=name,
            description=f"bench: {nodes} offline model calls in a row",
            nodes=[f"n{i}" for i in range(nodes)],
            build=lambda _agent: build_chain(nodes),
            to_state=lambda value: {"messages": [{"role": "user", "content": value["message"]}]},
            to_output=lambda state: {"replies": len(state.get("messages", [])) - 1},
            input_schema={"type": "object"},
        ),
        replace=True,
    )
    return name


for _nodes in (1, LONG):
    register(_nodes)
