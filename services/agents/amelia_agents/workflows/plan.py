"""`plan`: the seed's Discovery, Design and Planning agents in a row, with a person's approval
of the design before the plan is written.

    START ─► discovery ─► design ─► approval ─┬─ approved ─► planning ─► END
                                     ▲        ├─ rejected ─► END
                                     └────────┴─ unclear (ask again)

Each step is one streamed model call whose output is the next step's input: discovery reads the
request (and the thread's earlier messages), design reads the request and the discovery notes,
planning reads the request, the approved design and the reviewer's feedback.

`approval` is a LangGraph interrupt: the run is PAUSED with `Run.interrupt.value =
{"question", "design", "options"}` (also in the `run.interrupted` event) until ResumeRun. The
answer may be `true`/`false`, a string (`approve`, `yes`, `ok`, `lgtm`, … optionally followed by
feedback: `"approve, but keep SQLite"`; `reject`, `no`, … followed by the reason), or an object
`{"approved": bool, "reason"|"feedback": "…"}`. Anything else is asked again, saying so.

A rejection is a decision, not a failure: the run COMPLETES with `output.status = "rejected"`
and the reason (plus the discovery notes and the design), so failed-run alerts do not fire on a
person's "no" and nothing that was produced is lost. An approval resumes to the plan:
`output.status = "approved"`, `output.plan` (also `output.message`).

Every step's result is checkpointed before the next starts, so a worker killed mid-design
re-runs only design, and a worker killed while the run waits for approval loses nothing.
"""

from __future__ import annotations

import json
import operator
import re
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from amelia_agents import runtime
from amelia_agents.workflows.builtin import MESSAGE_SCHEMA, MODEL_PROPERTIES, model_params
from amelia_agents.workflows.registry import Workflow, register
from amelia_common.errors import ECHO_KEPT, ECHO_LIMIT, quoted
from amelia_common.json_numbers import whole_numbers

STEPS = ("discovery", "design", "planning")

# Short and concrete, so a 0.5B local model (the no-key default) stays on task.
DISCOVERY_PROMPT = (
    "You are the Discovery step of a planning team. List, as at most eight short bullet points, "
    "what must be understood before designing: the goal, the users, constraints, what exists, "
    "risks and open questions. Do not design yet."
)
DESIGN_PROMPT = (
    "You are the Design step. From the request and the discovery notes, propose a design as "
    "short bullet points: the approach, the main components and what each does, the data and "
    "interfaces, and the trade-offs you chose. Do not write tasks yet."
)
PLANNING_PROMPT = (
    "You are the Planning step. Turn the approved design into a numbered list of "
    "implementation tasks, in order. For each task say what to do, what it touches, how to "
    "test it and what it depends on. Follow the reviewer's feedback."
)
QUESTION = (
    "Approve this design so the plan can be written? Answer 'approve' (optionally with "
    "feedback) or 'reject' with a reason."
)

APPROVE_WORDS = {"approve", "approved", "yes", "y", "ok", "okay", "lgtm", "accept", "go"}
REJECT_WORDS = {"reject", "rejected", "no", "n", "deny", "decline", "stop"}


class PlanState(TypedDict, total=False):
    messages: Annotated[list[dict[str, Any]], operator.add]
    request: dict[str, Any]
    discovery: str
    design: str
    # {"decision": "approved" | "rejected" | "unclear", "reason": str, "feedback": str, ...}
    approval: dict[str, Any]
    plan: str


def parse_answer(answer: Any) -> dict[str, Any]:
    """A person's answer to the approval question, as a decision."""
    if isinstance(answer, bool):
        return {"decision": "approved" if answer else "rejected", "reason": "", "feedback": ""}
    if isinstance(answer, dict):
        note = str(answer.get("reason") or answer.get("feedback") or answer.get("comment") or "")
        if isinstance(answer.get("approved"), bool):
            approved = answer["approved"]
        elif isinstance(answer.get("decision") or answer.get("answer"), str):
            inner = parse_answer(str(answer.get("decision") or answer.get("answer")))
            if inner["decision"] == "unclear":
                return {**inner, "answer": answer}
            approved = inner["decision"] == "approved"
            note = note or inner["reason"] or inner["feedback"]
        else:
            return {"decision": "unclear", "answer": answer}
        return {
            "decision": "approved" if approved else "rejected",
            "reason": "" if approved else note,
            "feedback": note if approved else "",
        }
    if isinstance(answer, str):
        match = re.match(r"\s*([A-Za-z]+)\b[\s,.:;!\-—]*(.*)", answer, re.DOTALL)
        if match:
            word, rest = match.group(1).lower(), match.group(2).strip()
            if word in APPROVE_WORDS:
                return {"decision": "approved", "reason": "", "feedback": rest}
            if word in REJECT_WORDS:
                return {"decision": "rejected", "reason": rest, "feedback": ""}
    return {"decision": "unclear", "answer": answer}


def _request_text(state: PlanState) -> str:
    return str(state.get("request", {}).get("message", ""))


def step_params(request: dict[str, Any], step: str, system: str) -> dict[str, Any]:
    """A step's model call parameters: the request's (`models.<step>` first) with the step's
    instructions after the request's system prompt."""
    params = model_params(None, request)
    params["model"] = str((request.get("models") or {}).get(step) or params["model"])
    params["system"] = f"{params['system']}\n\n{system}".strip()
    return params


def ask(question: dict[str, Any], previous: dict[str, Any] | None, answers: str = "") -> Any:
    """Pause the run on `question` (an interrupt); the answer it resumes with. After an
    unclear answer the question says so, naming the `answers` it takes when given (develop's
    final question takes land / discard / keep, not an approval or a rejection)."""
    if (previous or {}).get("decision") == "unclear":
        unclear = (
            f"is not one of: {answers}" if answers else "is neither an approval nor a rejection"
        )
        answer = shown_answer((previous or {}).get("answer"))
        question["note"] = f"{answer} {unclear}; please answer again."
    return interrupt(question)


def shown_answer(answer: Any) -> str:
    """An unclear answer as a re-asked question quotes it. Text in quotes, as error messages
    quote a value; anything else as the JSON it was sent as, whole numbers as integers (a
    Struct holds 1 as 1.0: `{'deep': [[[[1.0]]]]}`, Python's repr, was shown before, QA s27b
    L10). Past ECHO_LIMIT characters, its start and its length, as errors quote a long value
    (`amelia_common.errors.shorten_echoes`): the note rides in the question, which every reader
    of the run and its thread gets again."""
    if isinstance(answer, str):
        return quoted(answer)
    text = json.dumps(whole_numbers(answer), ensure_ascii=False)
    if len(text) <= ECHO_LIMIT:
        return text
    return f"{text[:ECHO_KEPT]}… ({len(text)} characters of JSON)"


async def _step(step: str, state: PlanState, system: str, messages: list[dict[str, Any]]) -> str:
    params = step_params(state.get("request", {}), step, system)
    result = await runtime.chat(messages, **params)
    return result.text


async def discovery(state: PlanState) -> dict[str, Any]:
    text = await _step("discovery", state, DISCOVERY_PROMPT, state.get("messages", []))
    return {"discovery": text}


async def design(state: PlanState) -> dict[str, Any]:
    prompt = f"Request:\n{_request_text(state)}\n\nDiscovery notes:\n{state.get('discovery', '')}"
    text = await _step("design", state, DESIGN_PROMPT, [{"role": "user", "content": prompt}])
    return {"design": text}


async def approval(state: PlanState) -> dict[str, Any]:
    question: dict[str, Any] = {
        "question": QUESTION,
        "design": state.get("design", ""),
        "options": ["approve", "reject"],
    }
    decision = parse_answer(ask(question, state.get("approval")))
    runtime.emit("workflow.progress", {"step": "approval", **decision})
    update: dict[str, Any] = {"approval": decision}
    if decision["decision"] == "rejected":
        # The thread remembers what was proposed and why it was turned down.
        reason = decision["reason"] or "no reason given"
        content = f"Proposed design:\n{state.get('design', '')}\n\nRejected: {reason}"
        update["messages"] = [{"role": "assistant", "content": content}]
    return update


def after_approval(state: PlanState) -> str:
    decision = (state.get("approval") or {}).get("decision")
    if decision == "approved":
        return "planning"
    if decision == "rejected":
        return END
    return "approval"


async def planning(state: PlanState) -> dict[str, Any]:
    prompt = f"Request:\n{_request_text(state)}\n\nApproved design:\n{state.get('design', '')}"
    feedback = (state.get("approval") or {}).get("feedback")
    if feedback:
        prompt += f"\n\nReviewer feedback:\n{feedback}"
    text = await _step("planning", state, PLANNING_PROMPT, [{"role": "user", "content": prompt}])
    return {"plan": text, "messages": [{"role": "assistant", "content": text}]}


def build_plan(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    graph = StateGraph(PlanState)
    graph.add_node("discovery", discovery)
    graph.add_node("design", design)
    graph.add_node("approval", approval)
    graph.add_node("planning", planning)
    graph.add_edge(START, "discovery")
    graph.add_edge("discovery", "design")
    graph.add_edge("design", "approval")
    graph.add_conditional_edges("approval", after_approval, ["planning", "approval", END])
    graph.add_edge("planning", END)
    return graph


def plan_to_state(value: dict[str, Any]) -> dict[str, Any]:
    # Every field is reset: a thread's earlier plan must not leak into this one.
    return {
        "messages": [{"role": "user", "content": value["message"]}],
        "request": value,
        "discovery": "",
        "design": "",
        "approval": {},
        "plan": "",
    }


def plan_output(state: dict[str, Any]) -> dict[str, Any]:
    decision = state.get("approval") or {}
    out: dict[str, Any] = {
        "discovery": state.get("discovery", ""),
        "design": state.get("design", ""),
    }
    if decision.get("decision") == "rejected":
        reason = decision.get("reason", "")
        message = f"Plan rejected: {reason}" if reason else "Plan rejected."
        return {"status": "rejected", "reason": reason, "message": message, **out}
    plan = state.get("plan", "")
    return {
        "status": "approved",
        "feedback": decision.get("feedback", ""),
        "plan": plan,
        "message": plan,
        **out,
    }


register(
    Workflow(
        name="plan",
        description=(
            "Discovery, then design, then — once you approve the design — an implementation "
            "plan; each step is a model call fed by the one before. Pauses for approval; a "
            "rejection completes the run with status 'rejected' and your reason."
        ),
        nodes=["discovery", "design", "approval", "planning"],
        build=build_plan,
        to_state=plan_to_state,
        to_output=plan_output,
        input_schema={
            **MESSAGE_SCHEMA,
            "properties": {
                **MESSAGE_SCHEMA["properties"],
                **MODEL_PROPERTIES,
                "models": {
                    "type": "object",
                    "description": "A model per step, overriding `model`.",
                    "properties": {step: MODEL_PROPERTIES["model"] for step in STEPS},
                    "additionalProperties": False,
                },
            },
        },
        default_timeout=900.0,
    )
)
