"""Workflow plugins for the dashboard tests, loaded by the agents service through
AGENT_WORKFLOW_MODULES:

- `approval` streams a draft, pauses with a question (a real LangGraph interrupt), and streams
  the answer it got when resumed;
- `cited` asks the real RAG service (gRPC Search) for passages, publishes them as a
  `run.retrieval` event, and answers with the best one.
"""

from __future__ import annotations

from typing import Any, TypedDict

from google.protobuf import json_format
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from amelia.v1 import rag_pb2, rag_pb2_grpc
from amelia_agents import runtime
from amelia_agents.workflows import Workflow, register
from amelia_common.grpc_client import aio_channel


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
    graph = StateGraph(ApprovalState)
    graph.add_node("draft", draft)
    graph.add_node("approve", approve)
    graph.add_node("finish", finish)
    graph.add_edge(START, "draft")
    graph.add_edge("draft", "approve")
    graph.add_edge("approve", "finish")
    graph.add_edge("finish", END)
    return graph


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


class CitedState(TypedDict, total=False):
    request: dict[str, Any]
    answer: str


async def retrieve(state: CitedState) -> dict[str, Any]:
    settings = runtime.current().settings
    query = str(state["request"]["message"])
    async with aio_channel(settings.RAG_ADDRESS, settings) as channel:
        reply = await rag_pb2_grpc.RagServiceStub(channel).Search(
            rag_pb2.SearchRequest(query=query, top_k=3), timeout=30
        )
    passages = [
        json_format.MessageToDict(hit, preserving_proto_field_name=True) for hit in reply.hits
    ]
    runtime.emit("run.retrieval", {"query": query, "passages": passages})
    answer = f"From {reply.hits[0].document_title}: {reply.hits[0].content}" if reply.hits else "?"
    for word in answer.split(" "):
        runtime.emit("run.token", {"text": word + " "})
    return {"answer": answer}


def build_cited(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    graph = StateGraph(CitedState)
    graph.add_node("retrieve", retrieve)
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", END)
    return graph


register(
    Workflow(
        name="cited",
        description="Answers from your documents with the passages it used (dashboard tests).",
        nodes=["retrieve"],
        build=build_cited,
        to_state=lambda value: {"request": value},
        to_output=lambda state: {"answer": state.get("answer", "")},
        input_schema={
            "type": "object",
            "required": ["message"],
            "properties": {"message": {"type": "string", "minLength": 1}},
        },
    ),
    replace=True,
)
