"""Passages from the RAG service, for a model's prompt.

The agents service never imports the rag package (it would pull torch in): it asks the RAG
service over gRPC (`RagService.Search` at `RAG_ADDRESS`), like any client. A source is
`documents/<id>` (that document) or `documents/*` (every document).

An unreachable RAG service is retried like a model call (`run.retry` events, exponential
backoff, the agent's `retry_attempts`); after that the run fails saying so. Answering without
the documents the agent was given would look like an answer from them, so there is no silent
fallback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from amelia.v1 import rag_pb2, rag_pb2_grpc
from amelia_agents import runtime
from amelia_common.grpc_client import aio_channel
from amelia_common.names import BadNameError, uuid_name

ALL_DOCUMENTS = "documents/*"
ACCEPTED = (
    "'documents/<id>' (<id> a document's UUID, as 'amelia docs ls' shows it) or 'documents/*' "
    "(every document)"
)
SEARCH_TIMEOUT_SECONDS = 30.0
# The RAG service refuses longer queries (8192); the embedding model reads far less anyway.
MAX_QUERY_CHARS = 8000
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class RetrievalError(runtime.NodeError):
    """The RAG service could not give the passages; the message says why and what to do."""


def check_sources(sources: Any, path: str = "context_sources") -> list[str]:
    """The sources as strings, or ValueError naming the bad one and the accepted forms.

    The one check of a context source (CreateAgent, UpdateAgent, CreateRun's input): the RAG
    service refuses a malformed document name, so accepting one would fail every run at
    `retrieve`. A well-formed id of no document (yet) is accepted: it gives no passages."""
    if not isinstance(sources, list):
        raise ValueError(f"{path} must be a list, each entry {ACCEPTED}")
    for source in sources:
        if source != ALL_DOCUMENTS and not (isinstance(source, str) and _document_name(source)):
            raise ValueError(
                f"{path} entry {str(source)[:100]!r} is not a context source: it must be {ACCEPTED}"
            )
    return list(sources)


def _document_name(text: str) -> bool:
    """Whether `text` is a document name the RAG service takes (`documents/<uuid>`)."""
    try:
        uuid_name(text, "documents")
    except BadNameError:
        return False
    return True


def search_request(query: str, sources: list[str], top_k: int) -> rag_pb2.SearchRequest:
    documents = [] if ALL_DOCUMENTS in sources else list(dict.fromkeys(sources))
    return rag_pb2.SearchRequest(query=query[:MAX_QUERY_CHARS], top_k=top_k, documents=documents)


def passage(index: int, hit: rag_pb2.SearchHit) -> dict[str, Any]:
    """A hit as the run's state keeps it and the `run.retrieval` event shows it."""
    return {
        "index": index,
        "document": hit.document,
        "document_title": hit.document_title,
        "chunk_index": hit.chunk_index,
        "start_offset": hit.start_offset,
        "end_offset": hit.end_offset,
        "page": hit.page,
        "heading_path": list(hit.heading_path),
        "score": round(hit.score, 6),
        "content": hit.content,
    }


async def retrieve(
    query: str, sources: list[str], top_k: int | None = None
) -> list[dict[str, Any]]:
    """Search the sources for `query` (top `top_k`, default `RAG_TOP_K`); emits `run.retrieval`
    with the passages found."""
    ctx = runtime.current()
    settings = ctx.settings
    request = search_request(query, sources, top_k or settings.RAG_TOP_K)
    retries = ctx.retry_attempts
    for attempt in range(retries + 1):
        try:
            async with aio_channel(settings.RAG_ADDRESS, settings) as channel:
                reply = await rag_pb2_grpc.RagServiceStub(channel).Search(
                    request, timeout=SEARCH_TIMEOUT_SECONDS
                )
            break
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code not in _RETRYABLE:
                raise RetrievalError(f"rag: {code.name}: {details}") from exc
            if attempt >= retries:
                raise RetrievalError(
                    f"rag: the RAG service at {settings.RAG_ADDRESS} is unreachable "
                    f"({code.name}: {details}); this run's context_sources need it: start "
                    f"the rag service (or set RAG_ADDRESS), or run without context_sources"
                ) from exc
            delay = settings.LLM_RETRY_BACKOFF_SECONDS * (2**attempt)
            runtime.emit(
                "run.retry",
                {
                    "error": f"rag: {code.name}: {details}",
                    "retry": attempt + 1,
                    "of": retries,
                    "delay_seconds": delay,
                },
            )
            await asyncio.sleep(delay)
    passages = [passage(i, hit) for i, hit in enumerate(reply.hits, start=1)]
    runtime.emit("run.retrieval", {"query": query, "sources": sources, "passages": passages})
    return passages
