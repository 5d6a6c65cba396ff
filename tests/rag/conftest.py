"""RagService fixtures: the real model (loaded once), the service in process, a client.

The model is wrapped by `CountingModel` so tests can assert that a re-ingest did no embedding.
The service runs with a small inline limit and upload limit so size errors are cheap to test,
and a small embedding batch so progress events show up on modest documents.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from local_model import local_model
from rag_endpoint import EmbeddingServer
from rag_helpers import INLINE_LIMIT, UPLOAD_LIMIT, CountingModel, Rag

from amelia.v1 import rag_pb2_grpc
from amelia_common.db import create_engine, session_factory
from amelia_common.nats_client import connect_nats
from amelia_rag.embeddings import LocalEmbedder
from amelia_rag.server import build_service
from amelia_rag.store import DocumentStore


@pytest.fixture(scope="session")
def counting_model() -> CountingModel:
    return CountingModel(local_model())  # loaded once per session, shared with tests/workflows


@pytest.fixture(scope="session")
async def rag(infra: Any, counting_model: CountingModel) -> AsyncIterator[Rag]:
    """On a database of its own: another rag service's indexer on the session's database (a
    folder's mesh) would take and embed these documents, past the counting model."""
    async with infra.scratch_database("rag_tests") as database_url:
        async for running in _rag(infra, counting_model, database_url):
            yield running


async def _rag(infra: Any, counting_model: CountingModel, database_url: str) -> AsyncIterator[Rag]:
    settings = infra.settings(
        DATABASE_URL=database_url,
        MAX_INLINE_DOCUMENT_BYTES=INLINE_LIMIT,
        MAX_DOCUMENT_BYTES=UPLOAD_LIMIT,
        EMBEDDING_BATCH_SIZE=16,
        EVENTS_PUBLISH_TIMEOUT_SECONDS=2.0,
    )
    embedder = LocalEmbedder.from_model(counting_model, settings)
    service = await build_service(settings, embedder=embedder)
    port = await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    engine = create_engine(settings)
    nc = await connect_nats(settings, "rag-tests")
    yield Rag(
        settings=settings,
        service=service,
        stub=rag_pb2_grpc.RagServiceStub(channel),
        store=DocumentStore(engine, session_factory(engine)),
        model=counting_model,
        nc=nc,
    )
    await nc.close()
    await channel.close()
    await service.stop(1.0)
    await embedder.aclose()
    await engine.dispose()


@pytest.fixture
def server() -> Iterator[EmbeddingServer]:
    s = EmbeddingServer()
    yield s
    s.close()


@pytest.fixture
async def own_database(infra: Any) -> AsyncIterator[str]:
    """A fresh database on the session's server: vectors from another model must not mix."""
    if infra.postgres is None:
        pytest.skip("DATABASE_URL points at an external server")
    async with infra.scratch_database("rag_openai") as url:
        yield url
