"""A rag process killed (SIGKILL) mid-indexing: another one takes the document over and
finishes it from where the dead one stopped — nothing stays `indexing`, nothing is embedded
twice.

Real processes (`python -m amelia_rag`) on a database of their own, embedding through the fake
OpenAI-compatible endpoint, which holds requests after a count: the first process is thereby
arranged to be killed with exactly two batches saved and the third being embedded.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from rag_endpoint import EmbeddingServer
from service_process import ServiceProcess
from sqlalchemy import text

from amelia.v1 import rag_pb2, rag_pb2_grpc
from amelia_common.db import create_engine, session_factory
from amelia_common.embedded import free_port
from amelia_rag.indexer import LEASE_SECONDS
from amelia_rag.store import DocumentStore

REQUEST = 4  # EMBEDDING_BATCH_SIZE: texts per request to the endpoint
BATCH = 4 * REQUEST  # what the indexer embeds and saves at a time, in 4 requests
DOCUMENT = "# Orchard log\n\n" + "".join(
    f"## Row {i}\n\nRow {i} holds {i + 3} pear trees pruned on day {i} of winter.\n\n"
    for i in range(60)
)


def rag_process(env: dict[str, str], log: Path) -> tuple[ServiceProcess, str]:
    """`python -m amelia_rag` on a free port, and its address."""
    port = free_port()
    process = ServiceProcess("amelia_rag", {**os.environ, **env, "RAG_GRPC_PORT": str(port)}, log)
    return process, f"127.0.0.1:{port}"


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 180
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        met = condition()
        if met if isinstance(met, bool) else await met:
            return
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_killed_indexer_is_taken_over_and_resumes(
    infra: Any, server: EmbeddingServer, own_database: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": own_database,
        "NATS_URL": infra.nats_url,
        "AMELIA_DATA_DIR": str(tmp_path / "data"),
        "ENVIRONMENT": "testing",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_BASE_URL": server.url,
        "EMBEDDING_MODEL": "nomic-embed-text",
        "EMBEDDING_BATCH_SIZE": str(REQUEST),
    }
    engine = create_engine(infra.settings(DATABASE_URL=own_database))
    store = DocumentStore(engine, session_factory(engine))
    # The start-up probe, then two batches are answered; the third batch's first request waits.
    server.hold_after = 1 + 2 * BATCH // REQUEST
    first, first_address = rag_process(env, tmp_path / "first.log")
    second: ServiceProcess | None = None
    try:
        await first.wait_log('"listening"', timeout=120)
        async with grpc.aio.insecure_channel(first_address) as channel:
            reply = await rag_pb2_grpc.RagServiceStub(channel).IngestDocument(
                rag_pb2.IngestDocumentRequest(
                    source=rag_pb2.DocumentSource(file_path="/orchard/log.md"),
                    content=DOCUMENT.encode(),
                )
            )
        document_id = uuid.UUID(reply.document.name.removeprefix("documents/"))
        total = reply.document.chunk_count
        assert total > 3 * BATCH

        async def saved_two_batches() -> bool:
            return await store.count_pending(document_id) == total - 2 * BATCH

        await wait_for(saved_two_batches, "two batches saved")
        await wait_for(lambda: len(server.requests) == server.hold_after + 1, "third batch sent")
        first.kill()  # mid-embedding of the third batch
        server.released.set()
        row = await store.get(document_id)
        assert row is not None and row.state == "indexing" and row.lease_owner
        # The dead process's lease would run out by itself within LEASE_SECONDS; the clock is
        # moved on to then (waiting it out took half of this test's time).
        async with store.sessions() as session, session.begin():
            lease_left = await session.scalar(
                text("SELECT extract(epoch FROM lease_until - now()) FROM documents WHERE id = :d"),
                {"d": document_id},
            )
            assert lease_left is not None and lease_left <= LEASE_SECONDS, lease_left
            await session.execute(
                text("UPDATE documents SET lease_until = now() WHERE id = :d"), {"d": document_id}
            )

        sent_before = len(server.requests)
        second, second_address = rag_process(env, tmp_path / "second.log")
        await second.wait_log('"listening"', timeout=120)

        async def ready() -> bool:
            row = await store.get(document_id)
            assert row is not None and row.state != "failed", row.index_error
            return row.state == "ready"

        await wait_for(ready, "document ready")
        embedded_after = [
            r for r in server.requests[sent_before:] if r["input"] != ["dimension probe"]
        ]
        assert sum(len(r["input"]) for r in embedded_after) == total - 2 * BATCH
        async with store.sessions() as session:
            left = await session.execute(
                text("SELECT count(*) FROM chunks WHERE document_id = :d AND embedding IS NULL"),
                {"d": document_id},
            )
            assert left.scalar_one() == 0
        async with grpc.aio.insecure_channel(second_address) as channel:
            hits = await rag_pb2_grpc.RagServiceStub(channel).Search(
                rag_pb2.SearchRequest(query="how many pear trees in row 42", top_k=3)
            )
        assert any("Row 42 holds 45 pear trees" in h.content for h in hits.hits)
    finally:
        server.released.set()
        await first.stop()
        if second is not None:
            await second.stop()
        await engine.dispose()
