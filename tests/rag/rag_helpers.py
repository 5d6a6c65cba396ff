"""Support for the RAG tests: limits, the call-counting model wrapper and the running service.

Kept out of conftest.py so test modules can import it by a name no other suite uses.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import api

from amelia.v1 import rag_pb2, rag_pb2_grpc
from amelia_common.eventlog import decode_event, event_data, filter_subjects
from amelia_common.grpc_server import GrpcService
from amelia_common.settings import Settings
from amelia_rag.store import DocumentStore

INLINE_LIMIT = 64 * 1024
UPLOAD_LIMIT = 2 * 1024 * 1024


class CountingModel:
    """The real SentenceTransformer, counting `encode` calls and texts."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls = 0
        self.texts = 0

    def encode(self, sentences: list[str], **kwargs: Any) -> Any:
        self.calls += 1
        self.texts += len(sentences)
        return self.model.encode(sentences, **kwargs)

    def get_embedding_dimension(self) -> int:
        return int(self.model.get_embedding_dimension())


@dataclass
class Rag:
    """The running service and what tests use to talk to it and look behind it."""

    settings: Settings
    service: GrpcService
    stub: rag_pb2_grpc.RagServiceStub
    store: DocumentStore
    model: CountingModel
    nc: NATS

    async def ingest(
        self, content: bytes, *, wait: bool = True, **source: Any
    ) -> rag_pb2.IngestDocumentResponse:
        """IngestDocument, then (with `wait`) until the background indexing has finished."""
        reply: rag_pb2.IngestDocumentResponse = await self.stub.IngestDocument(
            rag_pb2.IngestDocumentRequest(source=rag_pb2.DocumentSource(**source), content=content)
        )
        if wait:
            await self.indexed(reply.document.name)
        return reply

    async def state(self, name: str) -> tuple[str, str]:
        """(state, index_error) of a document as the rag tables hold it."""
        row = await self.store.get(uuid.UUID(name.removeprefix("documents/")))
        assert row is not None, f"{name} does not exist"
        return row.state, row.index_error

    async def indexed(self, name: str, timeout: float = 900.0) -> str:
        """Wait until the document is no longer `indexing`; its final state."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            state, _ = await self.state(name)
            if state != "indexing":
                return state
            assert asyncio.get_running_loop().time() < deadline, f"{name} still indexing"
            await asyncio.sleep(0.1)

    async def events(
        self, name: str, *, wait_for: str = "", timeout: float = 10.0
    ) -> list[tuple[str, dict[str, Any]]]:
        """Every event stored for `documents/{id}` so far (waiting for `wait_for` if given)."""
        js = self.nc.jetstream()
        subjects = filter_subjects([], name)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            sub = await js.subscribe(
                subjects[0], ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
            )
            out: list[tuple[str, dict[str, Any]]] = []
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=0.5)
                    except TimeoutError:
                        break
                    event = decode_event(msg.data, msg.metadata.sequence.stream)
                    out.append((event.type, event_data(event)))
            finally:
                await sub.unsubscribe()
            if not wait_for or any(t == wait_for for t, _ in out):
                return out
            if asyncio.get_running_loop().time() > deadline:
                return out
            await asyncio.sleep(0.2)

    async def snapshot(self) -> str:
        """Everything the rag tables hold, as one comparable string."""
        from sqlalchemy import text

        async with self.store.sessions() as session:
            docs = await session.execute(
                text(
                    "SELECT id, identity, title, type, content_hash, metadata::text, chunk_count,"
                    " update_time FROM documents ORDER BY id"
                )
            )
            chunks = await session.execute(
                text(
                    "SELECT count(*), coalesce(md5(string_agg(id::text || content, ',' "
                    "ORDER BY id)), '') FROM chunks"
                )
            )
            return json.dumps([[str(c) for c in r] for r in docs] + [list(map(str, chunks.one()))])
