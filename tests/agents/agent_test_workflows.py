"""Workflows used only by the agents tests (loaded through AGENT_WORKFLOW_MODULES, also by the
worker subprocesses). Nodes record each execution in a file so a test can count them."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import StateGraph
from langgraph.types import interrupt

from amelia_agents import runtime
from amelia_agents.workflows import Workflow, register
from amelia_agents.workflows.registry import linear_graph


class StepsState(TypedDict, total=False):
    request: dict[str, Any]
    done: list[str]


def _record(state: StepsState, node: str) -> None:
    with Path(state["request"]["record"]).open("a") as f:
        f.write(f"{node} {os.getpid()}\n")


async def step_a(state: StepsState) -> dict[str, Any]:
    _record(state, "a")
    runtime.emit("run.token", {"text": "A "})
    return {"done": [*state.get("done", []), "a"]}


async def step_b(state: StepsState) -> dict[str, Any]:
    _record(state, "b")
    runtime.emit("run.token", {"text": "B1 "})
    release = Path(state["request"]["release"])
    # Polling a file: the test releases the node from another process.
    while not os.path.exists(release):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.05)
    runtime.emit("run.token", {"text": "B2 "})
    return {"done": [*state.get("done", []), "b"]}


async def step_c(state: StepsState) -> dict[str, Any]:
    _record(state, "c")
    runtime.emit("run.token", {"text": "C"})
    return {"done": [*state.get("done", []), "c"]}


def build_steps(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    return linear_graph(StepsState, ("a", step_a), ("b", step_b), ("c", step_c))


class AskState(TypedDict, total=False):
    request: dict[str, Any]
    answer: Any
    result: str


async def ask(state: AskState) -> dict[str, Any]:
    answer = interrupt({"question": state["request"].get("question", "Proceed?")})
    return {"answer": answer}


async def finish(state: AskState) -> dict[str, Any]:
    runtime.emit("run.token", {"text": f"answer was {state['answer']}"})
    return {"result": f"answer was {state['answer']}"}


def build_ask(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    return linear_graph(AskState, ("ask", ask), ("finish", finish))


class TwiceState(TypedDict, total=False):
    request: dict[str, Any]
    answers: list[Any]
    result: str


async def ask_first(state: TwiceState) -> dict[str, Any]:
    return {"answers": [interrupt({"question": "first?"})]}


async def ask_second(state: TwiceState) -> dict[str, Any]:
    return {"answers": [*state["answers"], interrupt({"question": "second?"})]}


async def join(state: TwiceState) -> dict[str, Any]:
    return {"result": ",".join(map(str, state["answers"]))}


def build_twice(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    return linear_graph(TwiceState, ("first", ask_first), ("second", ask_second), ("join", join))


class OneState(TypedDict, total=False):
    request: dict[str, Any]
    result: str


async def raise_node(state: OneState) -> dict[str, Any]:
    raise ValueError("boom in node")


async def sleep_node(state: OneState) -> dict[str, Any]:
    await asyncio.sleep(float(state["request"].get("seconds", 60)))
    return {"result": "slept"}


async def process_node(state: OneState) -> dict[str, Any]:
    pidfile = state["request"]["pidfile"]
    script = f"sleep 30 & echo $$ $! > {pidfile}; echo started; sleep 30"
    result = await runtime.run_process(["sh", "-c", script], tool="shell")
    return {"result": result.output}


def _mark(state: OneState, what: str) -> None:
    """A line in the shared record file: what happened, in which run's request."""
    request = state["request"]
    with Path(request["record"]).open("a") as f:
        f.write(f"{request['name']} {what} {os.getpid()} {time.time():.6f}\n")


async def stubborn_node(state: OneState) -> dict[str, Any]:
    """Waits for its `release` file; cancelled, it is slow to stop: it blocks its whole process
    (as a stuck unwinding would, sure to outlast the executor's grace) until `unwind` exists."""
    _mark(state, "work")
    try:
        while not os.path.exists(state["request"]["release"]):  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        _mark(state, "cancelled")
        while not os.path.exists(state["request"]["unwind"]):  # noqa: ASYNC240
            time.sleep(0.05)  # noqa: ASYNC251 - on purpose: the worker cannot stop it sooner
        _mark(state, "unwound")
        raise
    return {"result": "released"}


async def then_node(state: OneState) -> dict[str, Any]:
    _mark(state, "then")
    return {"result": f"{state.get('result')} then"}


def build_stubborn(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    return linear_graph(OneState, ("work", stubborn_node), ("then", then_node))


def _single(node: Any) -> Any:
    def build(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
        return linear_graph(OneState, ("work", node))

    return build


def _request(value: dict[str, Any]) -> dict[str, Any]:
    return {"request": value}


def _register(name: str, build: Any, nodes: list[str], output: Any) -> None:
    register(
        Workflow(
            name=name,
            description=f"test workflow {name}",
            nodes=nodes,
            build=build,
            to_state=_request,
            to_output=output,
            input_schema={"type": "object"},
        ),
        replace=True,
    )


_register("test-steps", build_steps, ["a", "b", "c"], lambda s: {"done": s.get("done", [])})
_register("test-ask", build_ask, ["ask", "finish"], lambda s: {"result": s.get("result", "")})
_register(
    "test-ask-twice",
    build_twice,
    ["first", "second", "join"],
    lambda s: {"result": s.get("result", "")},
)
_register("test-raise", _single(raise_node), ["work"], lambda s: {})
_register("test-sleep", _single(sleep_node), ["work"], lambda s: {"result": s.get("result")})
_register("test-process", _single(process_node), ["work"], lambda s: {"result": s.get("result")})
_register("test-stubborn", build_stubborn, ["work", "then"], lambda s: {"result": s.get("result")})
