"""Two rag replicas sharing one PostgreSQL: searches sent while one of them is frozen and then
SIGKILLed are all answered (by the other one, through gRPC's retry), and a document stored by
one replica is found through either."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from scale_support import EmbeddingEndpoint, addresses, replicas

from amelia.v1 import rag_pb2, rag_pb2_grpc
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings

SEARCHES = 24


@pytest.fixture
def embeddings() -> Iterator[EmbeddingEndpoint]:
    endpoint = EmbeddingEndpoint()
    yield endpoint
    endpoint.close()


@pytest.mark.slow
async def test_searches_survive_a_rag_replica_killed_under_them(
    cluster_settings: Settings, embeddings: EmbeddingEndpoint, tmp_path: Path
) -> None:
    settings = cluster_settings
    word = f"zorblax{uuid.uuid4().hex[:8]}"  # a word no other document of the session has
    async with replicas("rag", settings, tmp_path, 2, env=embeddings.env) as group:
        doomed, _survivor = group
        async with aio_channel(addresses(group), settings) as channel:
            stub = rag_pb2_grpc.RagServiceStub(channel)
            ingested = await stub.IngestDocument(
                rag_pb2.IngestDocumentRequest(
                    source=rag_pb2.DocumentSource(
                        title="Scale out", type=rag_pb2.DOCUMENT_TYPE_MARKDOWN
                    ),
                    content=f"# Replicas\n\nThe {word} runs on every replica.\n".encode(),
                ),
                timeout=60,
            )
            name = ingested.document.name
            search = rag_pb2.SearchRequest(query=word, mode=rag_pb2.SEARCH_MODE_KEYWORD, top_k=3)
            deadline = asyncio.get_running_loop().time() + 120
            while not (await stub.Search(search, timeout=30)).hits:  # indexed in the background
                assert asyncio.get_running_loop().time() < deadline, "never indexed"
                await asyncio.sleep(0.2)

            doomed.freeze()
            calls = [
                asyncio.ensure_future(stub.Search(search, timeout=90)) for _ in range(SEARCHES)
            ]
            deadline = asyncio.get_running_loop().time() + 60
            while sum(c.done() for c in calls) < 4:
                assert asyncio.get_running_loop().time() < deadline, "the live replica is silent"
                await asyncio.sleep(0.05)
            assert not all(c.done() for c in calls), "no search was sent to the frozen replica"
            doomed.kill()
            for reply in await asyncio.gather(*calls):
                assert [hit.document for hit in reply.hits] == [name]
                assert word in reply.hits[0].content
