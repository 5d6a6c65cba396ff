"""`chat` and the hidden `agent` graph: one model reply with the thread's memory and, when the
agent (or the chat input) names `context_sources`, passages from the RAG service.

    START ─► retrieve ─► respond ─► END        (retrieve only with context_sources)

`retrieve` searches the sources for the user's message (gRPC `RagService.Search`), emits a
`run.retrieval` event with the passages (document, offsets, page, score, text) and keeps them in
the state, so a worker that dies during `respond` does not search again. `respond` sends the
thread's messages with the passages in the system prompt (`context_blocks`: numbered, asking for
`[n]` citations), after a `workflow.progress` event "reading context" (a small local model takes
seconds to read them before its first token): they inform this reply without being added to the
thread's memory (the next message retrieves its own). An agent with `tools` answers
through `tools.chat_with_tools` (model ⇄ tools rounds inside `respond`); the thread's memory keeps
the reply, not the tool calls.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from amelia_agents import retrieval, runtime, tools
from amelia_agents.workflows.builtin import (
    MESSAGE_SCHEMA,
    MODEL_PROPERTIES,
    last_reply,
    message_to_state,
    model_params,
)
from amelia_agents.workflows.registry import (
    AGENT_WORKFLOW,
    InvalidInputError,
    Workflow,
    register,
)
from amelia_common.settings import Settings


class ChatState(TypedDict, total=False):
    """The conversation state (see `builtin.ConversationState`) plus the current passages."""

    messages: Annotated[list[dict[str, Any]], operator.add]
    request: dict[str, Any]
    # The passages retrieved for the current message (replaced by every run).
    context: list[dict[str, Any]]


def _sources(agent: dict[str, Any] | None, request: dict[str, Any]) -> list[str]:
    source = agent if agent is not None else request
    return list(source.get("context_sources") or [])


def _last_user_message(state: ChatState) -> str:
    for message in reversed(state.get("messages", [])):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


# Short, and explicit about the citation's form: a 0.5B model (the no-key default) cites
# reliably when shown the exact start ("[n]" alone, it wrote "According to the passage" for a
# single passage every time; with "[1]" spelled out, 18 of 18 answers cited); larger models read
# it as a plain instruction.
CITATION_PROMPT = (
    "Answer the user's question from the numbered passages below. Start your answer with "
    '"According to [1]," (or the number of the passage you use instead of 1; cite more as [n] '
    "too), then answer in one or two sentences. If no passage answers the question, say so."
)
NO_PASSAGES_PROMPT = (
    "No passage of the user's documents matched this message; say so if the answer needs them."
)


def context_blocks(passages: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The passages for the system prompt: a header, and one block per passage numbered as the
    `run.retrieval` event numbers them, so `[n]` in the answer points at a passage the user can
    open. The blocks go to the model call as `context`, dropped lowest-ranked first when the
    prompt does not fit the model's window (`llm.window`)."""
    if not passages:
        return NO_PASSAGES_PROMPT, []
    blocks = []
    for p in passages:
        where = f"{p['document']}, characters {p['start_offset']}-{p['end_offset']}"
        if p.get("page"):
            where += f", page {p['page']}"
        blocks.append(f"Passage [{p['index']}] ({p['document_title']}: {where}):\n{p['content']}")
    return CITATION_PROMPT, blocks


def build_chat(agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    async def retrieve(state: ChatState) -> dict[str, Any]:
        sources = _sources(agent, state.get("request", {}))
        passages = await retrieval.retrieve(_last_user_message(state), sources)
        return {"context": passages}

    async def respond(state: ChatState) -> dict[str, Any]:
        request = state.get("request", {})
        params = model_params(agent, request)
        context: list[str] = []
        if _sources(agent, request):
            passages = state.get("context", [])
            header, context = context_blocks(passages)
            params["system"] = f"{params['system']}\n\n{header}".strip()
            # A small local model reads ~80 prompt tokens/s: say why the first token waits.
            runtime.emit(
                "workflow.progress",
                {
                    "step": "reading context",
                    "passages": len(passages),
                    "characters": len(header) + sum(len(c) + 2 for c in context),
                },
            )
        tool_names = list((agent or {}).get("tools") or [])
        if tool_names:
            # The whole tool loop is this one node: a crash mid-loop re-runs it from the start.
            result = await tools.chat_with_tools(
                state.get("messages", []), tool_names, context=context, **params
            )
        else:
            result = await runtime.chat(state.get("messages", []), context=context, **params)
        return {"messages": [{"role": "assistant", "content": result.text}]}

    def route(state: ChatState) -> str:
        return "retrieve" if _sources(agent, state.get("request", {})) else "respond"

    graph = StateGraph(ChatState)
    graph.add_node("retrieve", retrieve)
    graph.add_node("respond", respond)
    graph.add_conditional_edges(START, route, ["retrieve", "respond"])
    graph.add_edge("retrieve", "respond")
    graph.add_edge("respond", END)
    return graph


def chat_to_state(value: dict[str, Any]) -> dict[str, Any]:
    # `context` is reset so a run without sources never sees an earlier run's passages.
    return {**message_to_state(value), "context": []}


def check_chat(value: dict[str, Any], _settings: Settings) -> None:
    if "context_sources" in value:
        try:
            retrieval.check_sources(value["context_sources"], "input.context_sources")
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc


register(
    Workflow(
        name="chat",
        description=(
            "One model reply to the message, with the thread's earlier messages as memory and, "
            "with context_sources ('documents/<id>' or 'documents/*'), passages from your "
            "documents in the prompt (shown as run.retrieval events)."
        ),
        nodes=["retrieve", "respond"],
        build=build_chat,
        to_state=chat_to_state,
        to_output=last_reply,
        input_schema={
            **MESSAGE_SCHEMA,
            "properties": {
                **MESSAGE_SCHEMA["properties"],
                **MODEL_PROPERTIES,
                "context_sources": {"type": "array", "items": {"type": "string", "minLength": 1}},
            },
        },
        check=check_chat,
    )
)

register(
    Workflow(
        name=AGENT_WORKFLOW,
        description=(
            "Runs an agent: its system prompt and model answer the message, with passages from "
            "its context_sources."
        ),
        nodes=["retrieve", "respond"],
        build=build_chat,
        to_state=chat_to_state,
        to_output=last_reply,
        input_schema=MESSAGE_SCHEMA,
        hidden=True,
    )
)
