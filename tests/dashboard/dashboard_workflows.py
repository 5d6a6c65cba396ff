"""A workflow plugin for the dashboard tests, loaded by the agents service through
AGENT_WORKFLOW_MODULES: `approval` streams a draft, pauses with a question (a real LangGraph
interrupt), and streams the answer it got when resumed — with an exact, model-free output."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import StateGraph
from langgraph.types import interrupt

from amelia_agents import runtime
from amelia_agents.workflows import Workflow, register
from amelia_agents.workflows.registry import linear_graph


class ApprovalState(TypedDict, total=False):
    request: dict[str, Any]
    answer: Any
    result: str


async def draft(state: ApprovalState) -> dict[str, Any]:
    for word in str(state["request"].get("message", "a plan")).split():
        runtime.emit("run.token", {"text": word + " "})
    return {}


async def approve(state: ApprovalState) -> dict[str, Any]:
    answer = interrupt(
        {"question": state["request"].get("question", "Ship it?"), "options": ["yes", "no"]}
    )
    return {"answer": answer}


async def finish(state: ApprovalState) -> dict[str, Any]:
    text = f"\nanswer was {state['answer']}"
    runtime.emit("run.token", {"text": text})
    return {"result": text.strip()}


def build(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    return linear_graph(ApprovalState, ("draft", draft), ("approve", approve), ("finish", finish))


register(
    Workflow(
        name="approval",
        description="Drafts, asks for approval, then reports the answer (dashboard tests).",
        nodes=["draft", "approve", "finish"],
        build=build,
        to_state=lambda value: {"request": value},
        to_output=lambda state: {"result": state.get("result", "")},
        input_schema={
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "question": {"type": "string"},
            },
        },
    ),
    replace=True,
)


class HoldState(TypedDict, total=False):
    request: dict[str, Any]


async def hold(state: HoldState) -> dict[str, Any]:
    # Holds a worker until the test creates the file `release` names (the queue view's test).
    # Streams its `message` first, and the text of the file `more` names once it exists (the
    # thread page's live turn): tokens arrive while the test watches, at instants it arranges.
    request = state["request"]
    release = Path(request["release"])
    for word in str(request.get("message", "")).split():
        runtime.emit("run.token", {"text": word + " "})
    more = Path(request["more"]) if request.get("more") else None
    while not release.exists():  # noqa: ASYNC240
        if more is not None and more.exists():
            runtime.emit("run.token", {"text": more.read_text()})
            more = None
        await asyncio.sleep(0.1)
    return {}


def build_hold(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    return linear_graph(HoldState, ("hold", hold))


register(
    Workflow(
        name="hold",
        description="Holds its worker until a file exists (dashboard tests).",
        nodes=["hold"],
        build=build_hold,
        to_state=lambda value: {"request": value},
        to_output=lambda state: {},
    ),
    replace=True,
)


class CallsState(TypedDict, total=False):
    request: dict[str, Any]
    said: list[str]


async def _say(state: CallsState, words: int) -> dict[str, Any]:
    """One model call (`offline:say:`: usage of its own, priced by the mesh's MODEL_PRICES)."""
    reply = " ".join(["word"] * words)
    result = await runtime.chat(
        [{"role": "user", "content": "say it"}], model=f"offline:say:{reply}"
    )
    return {"said": [*state.get("said", []), result.text]}


async def call_first(state: CallsState) -> dict[str, Any]:
    return await _say(state, 3)


async def call_then_hold(state: CallsState) -> dict[str, Any]:
    # Its call made, it says so in the file `called`, then waits for the file `release`: the
    # test stops the agents service between the two (an interrupted attempt).
    update = await _say(state, 5)
    request = state["request"]
    Path(request["called"]).write_text("called")  # noqa: ASYNC240
    while not Path(request["release"]).exists():  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.1)
    return update


def build_calls(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    return linear_graph(CallsState, ("first", call_first), ("second", call_then_hold))


register(
    Workflow(
        name="calls",
        description="Two nodes with a model call each, the second held after it (dashboard tests).",
        nodes=["first", "second"],
        build=build_calls,
        to_state=lambda value: {"request": value},
        to_output=lambda state: {"said": len(state.get("said", []))},
    ),
    replace=True,
)
