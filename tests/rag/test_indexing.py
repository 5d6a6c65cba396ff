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
from amelia_rag.chunking import context_text
from amelia_rag.indexer import MAX_ATTEMPTS

GUIDE = b"# Orchard\n\n" + b"".join(
    f"## Tree {i}\n\nApple tree number {i} is pruned in February and fed in April.\n\n".encode()
    for i in range(40)
)


async def _claimed_by_a_dead_process(rag: Rag, name: str, attempts: int, seconds: float) -> None:
    """What a rag process killed before saving any batch leaves: its lease, nothing embedded."""
    document_id = uuid.UUID(name.removeprefix("documents/"))
    await _leased(rag, document_id, "dead-process", seconds=seconds, attempts=attempts)
    async with rag.store.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE documents SET state = 'indexing' WHERE id = :d"), {"d": document_id}
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
    from amelia_common.eventlog import EventLog
    from amelia_common.eventlog.outbox import Outbox
    from amelia_rag.embeddings import LocalEmbedder
    from amelia_rag.indexer import Indexer
    from amelia_rag.server import EVENT_SOURCE, OUTBOX_TABLE
    from amelia_rag.store import DocumentStore

    embedder = LocalEmbedder.from_model(rag.model, rag.settings)
    # A replica's store: its changes' events through the outbox, as the service's.
    outbox = Outbox(rag.store.sessions, EventLog(rag.nc, rag.settings, EVENT_SOURCE), OUTBOX_TABLE)
    store = DocumentStore(rag.store.engine, rag.store.sessions, outbox)
    replicas = [Indexer(store, embedder, batch_size=8, poll_seconds=0.1) for _ in range(2)]
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


async def _leased(
    rag: Rag, document_id: uuid.UUID, owner: str, *, seconds: float, attempts: int | None = None
) -> None:
    """`owner` holds the document for `seconds` more, after its claim number `attempts` (by
    default one more claim than before), its saved embeddings kept."""
    async with rag.store.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE documents SET lease_owner = :o,"
                " lease_until = now() + make_interval(secs => :s),"
                " index_attempts = coalesce(CAST(:a AS integer), index_attempts + 1)"
                " WHERE id = :d"
            ),
            {"o": owner, "s": seconds, "a": attempts, "d": document_id},
        )


async def _dead_process_saves_a_batch(rag: Rag, name: str, owner: str, size: int) -> None:
    """A rag process claims the document, saves one batch of embeddings and dies (its lease
    still running): an interruption after which indexing made progress."""
    document_id = uuid.UUID(name.removeprefix("documents/"))
    await _leased(rag, document_id, owner, seconds=600)
    row = await rag.store.get(document_id)
    assert row is not None
    pending = await rag.store.pending(document_id, size)
    texts = [context_text(row.title, p.heading_path, p.page, p.content) for p in pending]
    vectors = rag.model.model.encode(texts, normalize_embeddings=True)
    saved = await rag.store.save_vectors(
        document_id, owner, row.content_hash, [p.id for p in pending], vectors, 600
    )
    assert saved


async def _api_progress(rag: Rag, name: str) -> tuple[int, int, int]:
    """(state, embedded, total) as GetDocument tells any client."""
    reply = await rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name=name))
    d = reply.document
    return d.state, d.embedded_chunk_count, d.chunk_count


async def test_interruptions_after_progress_do_not_fail_a_document(rag: Rag) -> None:
    """Interrupted more than MAX_ATTEMPTS times, each time after saving a batch: carried on to
    READY, and every screen could follow how far it got."""
    tag = uuid.uuid4().hex[:8]
    reply = await rag.ingest(GUIDE + tag.encode(), file_path=f"/orchard/progress-{tag}.md")
    name, total = reply.document.name, reply.document.chunk_count
    assert reply.document.embedded_chunk_count in (0, total)  # answered before or after indexing
    assert await _api_progress(rag, name) == (rag_pb2.DOCUMENT_STATE_READY, total, total)
    await _claimed_by_a_dead_process(rag, name, attempts=0, seconds=600)
    assert await _api_progress(rag, name) == (rag_pb2.DOCUMENT_STATE_INDEXING, 0, total)
    batch = 4
    for i in range(MAX_ATTEMPTS + 2):
        await _dead_process_saves_a_batch(rag, name, f"dead-{i}", batch)
        assert await _api_progress(rag, name) == (
            rag_pb2.DOCUMENT_STATE_INDEXING,
            batch * (i + 1),
            total,
        )
    listed = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(page_size=1000))
    [mine] = [d for d in listed.documents if d.name == name]
    assert mine.embedded_chunk_count == batch * (MAX_ATTEMPTS + 2)
    await _lease_runs_out(rag, name)
    assert await rag.indexed(name) == "ready"
    assert await _api_progress(rag, name) == (rag_pb2.DOCUMENT_STATE_READY, total, total)
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name))


async def test_ingesting_a_failed_document_again_resumes_its_embeddings(rag: Rag) -> None:
    tag = uuid.uuid4().hex[:8]
    content = GUIDE + tag.encode()
    path = f"/orchard/resume-{tag}.md"
    reply = await rag.ingest(content, file_path=path)
    name, total = reply.document.name, reply.document.chunk_count
    await _claimed_by_a_dead_process(rag, name, attempts=0, seconds=600)
    await _dead_process_saves_a_batch(rag, name, "dead", 16)
    # Then interrupted MAX_ATTEMPTS times in a row without progress: given up.
    document_id = uuid.UUID(name.removeprefix("documents/"))
    await _leased(rag, document_id, "dead-process", seconds=0, attempts=MAX_ATTEMPTS)
    assert await rag.indexed(name) == "failed"
    _, error = await rag.state(name)
    assert "without progress" in error and "ingest the document again" in error
    assert await _api_progress(rag, name) == (rag_pb2.DOCUMENT_STATE_FAILED, 16, total)
    before = rag.model.texts
    again = await rag.ingest(content, file_path=path)
    assert not again.unchanged and again.document.name == name
    assert again.document.embedded_chunk_count >= 16
    assert await rag.state(name) == ("ready", "")
    # Only the chunks not embedded before were embedded.
    assert rag.model.texts - before == total - 16
    assert await _api_progress(rag, name) == (rag_pb2.DOCUMENT_STATE_READY, total, total)
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name))
