"""A change of embedding model never leaves vectors of two models side by side in the index.

The first service embeds with an OpenAI-compatible endpoint (the local wire-format server:
bag-of-words vectors, another "model"); the same database is then served by the local
all-MiniLM-L6-v2. On start the service sends the other model's documents back to indexing and
embeds them again; a restart with the same model embeds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from rag_endpoint import EmbeddingServer, openai_settings
from rag_helpers import CountingModel
from sqlalchemy import text

from amelia.v1 import rag_pb2, rag_pb2_grpc
from amelia_common.db import create_engine, session_factory
from amelia_common.settings import Settings
from amelia_rag.chunking import context_text
from amelia_rag.embeddings import LocalEmbedder
from amelia_rag.server import StartupError, build_service
from amelia_rag.store import DocumentStore

GUIDE = (Path(__file__).parent / "fixtures" / "garden_guide.md").read_bytes()


@contextlib.asynccontextmanager
async def running(
    settings: Settings, model: CountingModel | None = None
) -> AsyncIterator[rag_pb2_grpc.RagServiceStub]:
    embedder = LocalEmbedder.from_model(model, settings) if model is not None else None
    service = await build_service(settings, embedder=embedder)
    port = await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield rag_pb2_grpc.RagServiceStub(channel)
    finally:
        await service.stop(1.0)
        if embedder is not None:
            await embedder.aclose()


async def ready(store: DocumentStore, document_id: uuid.UUID) -> str:
    """The document's index signature once it is `ready` (generous deadline: a busy CPU)."""
    for _ in range(3000):
        row = await store.get(document_id)
        assert row is not None and row.state != "failed", row and row.index_error
        if row.state == "ready":
            return row.index_signature
        await asyncio.sleep(0.1)
    raise AssertionError("still indexing")


async def test_a_new_model_embeds_the_other_models_documents_again(
    infra: Any, server: EmbeddingServer, own_database: str, counting_model: CountingModel
) -> None:
    engine = create_engine(infra.settings(DATABASE_URL=own_database))
    store = DocumentStore(engine, session_factory(engine))
    local = infra.settings(DATABASE_URL=own_database, EMBEDDING_BATCH_SIZE=16)
    try:
        async with running(openai_settings(infra, server.url, DATABASE_URL=own_database)) as stub:
            reply = await stub.IngestDocument(
                rag_pb2.IngestDocumentRequest(
                    source=rag_pb2.DocumentSource(file_path="/garden/guide.md"), content=GUIDE
                )
            )
            document_id = uuid.UUID(reply.document.name.removeprefix("documents/"))
            assert (await ready(store, document_id)).startswith("openai:")

        before = counting_model.texts
        async with running(local, counting_model) as stub:
            signature = await ready(store, document_id)
            assert signature.startswith(f"local:{local.EMBEDDING_MODEL}:384|chunks=")
            assert counting_model.texts - before == reply.document.chunk_count
            hits = await stub.Search(
                rag_pb2.SearchRequest(
                    query="prune roses in late winter", top_k=3, mode=rag_pb2.SEARCH_MODE_VECTOR
                )
            )
            assert "Pruning roses" in hits.hits[0].heading_path
            # Unchanged content under the new model: nothing to do at the next ingest.
            again = await stub.IngestDocument(
                rag_pb2.IngestDocumentRequest(
                    source=rag_pb2.DocumentSource(file_path="/garden/guide.md"), content=GUIDE
                )
            )
            assert again.unchanged
        async with store.sessions() as session:
            rows = (
                await session.execute(
                    text(
                        "SELECT content, heading_path, page, CAST(embedding AS real[]) AS v"
                        " FROM chunks WHERE document_id = :d ORDER BY chunk_index"
                    ),
                    {"d": document_id},
                )
            ).all()
        texts = [
            context_text(reply.document.title, tuple(r.heading_path), r.page, r.content)
            for r in rows
        ]
        expected = counting_model.encode(texts, batch_size=16, normalize_embeddings=True)
        assert np.abs(np.asarray([r.v for r in rows], dtype=np.float32) - expected).max() < 1e-4

        # The same model again: nothing is embedded on start.
        before = counting_model.texts
        async with running(local, counting_model):
            assert await ready(store, document_id) == signature
        assert counting_model.texts == before
    finally:
        await engine.dispose()


async def test_the_local_provider_refuses_a_model_it_does_not_have(infra: Any) -> None:
    """Not MiniLM under another name (which would also re-embed everything for nothing)."""
    settings = infra.settings(EMBEDDING_MODEL="BAAI/bge-small-en-v1.5")
    with pytest.raises(StartupError, match="not a model the local provider has"):
        await build_service(settings)
