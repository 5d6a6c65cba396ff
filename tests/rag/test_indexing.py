"""Background indexing: uploads answer before embedding, and no document stays `indexing`.

The service's own indexer runs throughout (a replica); the tests add what a dead or racing
replica leaves behind — a claimed document whose lease is still running, or one interrupted
too often — straight in the rag tables, and check what the live indexer does with it.
"""

from __future__ import annotations

import asyncio
import uuid

from rag_helpers import Rag
from sqlalchemy import text

from amelia.v1 import rag_pb2
from amelia_rag.indexer import MAX_ATTEMPTS

GUIDE = b"# Orchard\n\n" + b"".join(
    f"## Tree {i}\n\nApple tree number {i} is pruned in February and fed in April.\n\n".encode()
    for i in range(40)
)


async def _claimed_by_a_dead_process(rag: Rag, name: str, attempts: int, seconds: float) -> None:
    """What a rag process killed before saving any batch leaves: its lease, nothing embedded."""
    document_id = uuid.UUID(name.removeprefix("documents/"))
    async with rag.store.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE documents SET state = 'indexing', lease_owner = 'dead-process',"
                " lease_until = now() + make_interval(secs => :s), index_attempts = :a"
                " WHERE id = :d"
            ),
            {"s": seconds, "a": attempts, "d": document_id},
        )
        await session.execute(
            text("UPDATE chunks SET embedding = NULL WHERE document_id = :d"), {"d": document_id}
        )


async def _api_state(rag: Rag, name: str) -> tuple[int, str]:
    """The document's indexing state and error as GetDocument tells any client."""
    reply = await rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name=name))
    return reply.document.state, reply.document.index_error


async def _lease_runs_out(rag: Rag, name: str) -> None:
    async with rag.store.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE documents SET lease_until = now() WHERE id = :d"),
            {"d": uuid.UUID(name.removeprefix("documents/"))},
        )


async def test_upload_answers_before_embedding_and_is_found_by_its_words_meanwhile(
    rag: Rag,
) -> None:
    tag = uuid.uuid4().hex[:8]
    quince = f"## Quince\n\nThe quince{tag} tree is pruned in March.\n".encode()
    reply = await rag.ingest(GUIDE + quince, wait=False, file_path=f"/orchard/{tag}.md")
    assert reply.document.chunk_count > 10
    # Answered with the chunks stored; a dead process holds it, so nothing gets embedded.
    await _claimed_by_a_dead_process(rag, reply.document.name, attempts=1, seconds=600)
    assert (await rag.state(reply.document.name))[0] == "indexing"
    assert await _api_state(rag, reply.document.name) == (rag_pb2.DOCUMENT_STATE_INDEXING, "")
    # The default search, over every document, finds it by its words at once.
    request = rag_pb2.SearchRequest(query=f"when is the quince{tag} tree pruned")
    hits = await rag.stub.Search(request)
    assert f"quince{tag}" in hits.hits[0].content and hits.hits[0].vector_score == 0.0
    # The dead process's lease runs out; the live indexer takes the document over.
    await _lease_runs_out(rag, reply.document.name)
    assert await rag.indexed(reply.document.name) == "ready"
    assert await _api_state(rag, reply.document.name) == (rag_pb2.DOCUMENT_STATE_READY, "")
    hits = await rag.stub.Search(request)
    assert f"quince{tag}" in hits.hits[0].content and hits.hits[0].vector_score > 0.0
    events = await rag.events(reply.document.name, wait_for="document.indexed", timeout=60)
    assert [t for t, _ in events].count("document.indexed") == 1
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=reply.document.name))


async def test_a_document_interrupted_too_often_is_marked_failed(rag: Rag) -> None:
    tag = uuid.uuid4().hex[:8]
    reply = await rag.ingest(GUIDE + tag.encode(), wait=False, file_path=f"/orchard/{tag}.md")
    await _claimed_by_a_dead_process(rag, reply.document.name, attempts=MAX_ATTEMPTS, seconds=1)
    assert await rag.indexed(reply.document.name) == "failed"
    _, error = await rag.state(reply.document.name)
    assert "interrupted" in error and "ingest the document again" in error
    # A client reads the same from the API.
    assert await _api_state(rag, reply.document.name) == (rag_pb2.DOCUMENT_STATE_FAILED, error)
    events = await rag.events(reply.document.name, wait_for="document.failed", timeout=60)
    failed = [d for t, d in events if t == "document.failed"]
    assert failed and "interrupted" in failed[0]["error"]
    # Ingesting the same content again retries it.
    again = await rag.ingest(GUIDE + tag.encode(), file_path=f"/orchard/{tag}.md")
    assert not again.unchanged
    assert await rag.state(reply.document.name) == ("ready", "")
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=reply.document.name))


async def test_racing_indexers_embed_each_chunk_once(rag: Rag) -> None:
    """Two more indexers (replicas) next to the service's: every chunk is embedded once."""
    from amelia_rag.embeddings import LocalEmbedder
    from amelia_rag.indexer import Indexer

    async def publish(event_type: str, document_id: uuid.UUID, data: dict[str, object]) -> None:
        return None

    embedder = LocalEmbedder.from_model(rag.model, rag.settings)
    replicas = [
        Indexer(rag.store, embedder, publish, batch_size=8, poll_seconds=0.1) for _ in range(2)
    ]
    for replica in replicas:
        replica.start()
    try:
        tag = uuid.uuid4().hex[:8]
        before = rag.model.texts
        names = []
        total = 0
        for i in range(4):
            reply = await rag.ingest(
                GUIDE + f"{tag} {i}".encode(), wait=False, file_path=f"/race/{tag}/{i}.md"
            )
            names.append(reply.document.name)
            total += reply.document.chunk_count
        for name in names:
            assert await rag.indexed(name) == "ready"
        assert rag.model.texts - before == total
    finally:
        for replica in replicas:
            await replica.stop()
        await embedder.aclose()
    await asyncio.gather(
        *(rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=n)) for n in names)
    )


async def test_each_chunk_holds_the_vector_of_its_own_text(rag: Rag) -> None:
    """The indexer saves a batch's vectors in one statement: each lands on its own chunk, exact."""
    import numpy as np

    from amelia_rag.chunking import context_text

    tag = uuid.uuid4().hex[:8]
    reply = await rag.ingest(GUIDE + tag.encode(), file_path=f"/orchard/vectors-{tag}.md")
    assert reply.document.chunk_count > 30
    async with rag.store.sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT content, heading_path, page, CAST(embedding AS real[]) AS v"
                    " FROM chunks WHERE document_id = :d ORDER BY chunk_index"
                ),
                {"d": uuid.UUID(reply.document.name.removeprefix("documents/"))},
            )
        ).all()
    stored = np.asarray([r.v for r in rows], dtype=np.float32)
    texts = [
        context_text(reply.document.title, tuple(r.heading_path), r.page, r.content) for r in rows
    ]
    expected = rag.model.encode(texts, batch_size=16, normalize_embeddings=True)
    assert stored.shape == expected.shape
    # Batches padded differently differ in the last bits only; a vector on the wrong chunk,
    # or cut at the wrong place, differs in the first.
    assert np.abs(stored - expected).max() < 1e-4
    assert (np.argmax(stored @ expected.T, axis=1) == np.arange(len(rows))).all()
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=reply.document.name))
