"""The OpenAI-compatible embedding provider, against a local server speaking `/v1/embeddings`.

The server is the only fake: a real HTTP server on a free port answering the OpenAI wire format
with deterministic bag-of-words vectors (texts that share words are similar), so the provider's
HTTP client, batching and error handling, and the service built on it, all run for real.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from rag_endpoint import EmbeddingServer, bag_of_words, openai_settings
from rag_helpers import Rag

from amelia.v1 import rag_pb2, rag_pb2_grpc
from amelia_common.db import create_engine, session_factory
from amelia_rag.embeddings import OpenAIEmbedder
from amelia_rag.server import StartupError, build_service
from amelia_rag.store import DocumentStore

FIXTURES = Path(__file__).parent / "fixtures"


async def test_provider_speaks_the_wire_format(infra: Any, server: EmbeddingServer) -> None:
    embedder = await OpenAIEmbedder.connect(openai_settings(infra, server.url))
    try:
        assert embedder.dimension == 384
        texts = [f"text number {i} about apples" for i in range(10)]
        progress: list[tuple[int, int]] = []

        async def on_progress(done: int, total: int) -> None:
            progress.append((done, total))

        vectors = await embedder.embed(texts, on_progress=on_progress)
    finally:
        await embedder.aclose()
    assert [len(r["input"]) for r in server.requests] == [1, 4, 4, 2]  # probe, then batches
    assert {r["model"] for r in server.requests} == {"nomic-embed-text"}
    assert {r["auth"] for r in server.requests} == {"Bearer sk-test-key"}
    assert {r["encoding_format"] for r in server.requests} == {"float"}
    assert progress == [(4, 10), (8, 10)]
    expected = np.asarray(bag_of_words(texts[7], 384))
    assert np.allclose(vectors[7], expected / np.linalg.norm(expected), atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


async def test_service_ingests_and_searches_through_the_endpoint(
    infra: Any, server: EmbeddingServer, own_database: str
) -> None:
    settings = openai_settings(infra, server.url, DATABASE_URL=own_database)
    service = await build_service(settings)
    port = await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = rag_pb2_grpc.RagServiceStub(channel)
    engine = create_engine(settings)
    store = DocumentStore(engine, session_factory(engine))

    async def settled(name: str) -> tuple[str, str]:
        """(state, index_error) once the background indexing is over."""
        document_id = uuid.UUID(name.removeprefix("documents/"))
        for _ in range(3000):
            row = await store.get(document_id)
            assert row is not None
            if row.state != "indexing":
                return row.state, row.index_error
            await asyncio.sleep(0.1)
        raise AssertionError(f"{name} still indexing")

    try:
        guide = (FIXTURES / "garden_guide.md").read_bytes()
        source = rag_pb2.DocumentSource(file_path="/garden/garden_guide.md")
        reply = await stub.IngestDocument(
            rag_pb2.IngestDocumentRequest(source=source, content=guide)
        )
        assert reply.document.chunk_count > 4
        assert await settled(reply.document.name) == ("ready", "")
        hits = await stub.Search(
            rag_pb2.SearchRequest(
                query="prune roses in late winter",
                top_k=3,
                min_score=0.1,
                mode=rag_pb2.SEARCH_MODE_VECTOR,
            )
        )
        assert hits.hits and "Pruning roses" in hits.hits[0].heading_path

        requests = len(server.requests)
        again = await stub.IngestDocument(
            rag_pb2.IngestDocumentRequest(source=source, content=guide)
        )
        assert again.unchanged and len(server.requests) == requests

        # The endpoint fails: the upload is still accepted (embedding comes later), and once
        # the indexer has tried enough, the document says why it is not searchable.
        server.fail_with = 503
        changed = await stub.IngestDocument(
            rag_pb2.IngestDocumentRequest(source=source, content=guide + b"\nNew line.\n")
        )
        state, error = await settled(changed.document.name)
        assert state == "failed" and "answered 503" in error, error
        found = await stub.Search(  # keyword: the endpoint cannot embed the query either
            rag_pb2.SearchRequest(query="prune roses", mode=rag_pb2.SEARCH_MODE_KEYWORD)
        )
        assert "Pruning roses" in found.hits[0].heading_path  # still found by its words
        server.fail_with = 0
        retried = await stub.IngestDocument(
            rag_pb2.IngestDocumentRequest(source=source, content=guide + b"\nNew line.\n")
        )
        assert not retried.unchanged  # same content, but its indexing had failed: tried again
        assert await settled(retried.document.name) == ("ready", "")
    finally:
        await channel.close()
        await service.stop(1.0)
        await engine.dispose()


async def test_endpoint_of_another_dimension_stops_the_service(infra: Any, rag: Rag) -> None:
    wide = EmbeddingServer(dimension=768)
    database = rag.settings.DATABASE_URL  # the rag service made its chunks table for 384
    try:
        with pytest.raises(StartupError, match="produces 768-dimension vectors"):
            await build_service(openai_settings(infra, wide.url, DATABASE_URL=database))
        # The model now matches the setting, but the existing table was made for 384.
        with pytest.raises(StartupError, match="chunks table holds 384-dimension vectors"):
            await build_service(
                openai_settings(infra, wide.url, DATABASE_URL=database, EMBEDDING_DIMENSION=768)
            )
    finally:
        wide.close()


async def test_unreachable_endpoint_stops_the_service(infra: Any) -> None:
    gone = EmbeddingServer()
    url = gone.url
    gone.close()
    with pytest.raises(StartupError, match="cannot use the embedding endpoint"):
        await build_service(openai_settings(infra, url))
