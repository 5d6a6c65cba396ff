"""A re-ingest racing a delete or another re-ingest of the same name (QA F5).

A delete answered OK means the document is gone: an ingest of its name that commits after it
makes a new document (new name, `replaces_previous` false), never brings the deleted one back.
Two ingests of one name give one document holding the content committed last, and each
`document.uploaded` says truly whether it replaced a stored document.

The interleaving is arranged, not hoped for: the test holds, from a connection of its own, the
advisory lock an ingest of that name takes to store it (store.py `_locked_document`), waits
until PostgreSQL shows the ingest waiting on it (so it has read, parsed and chunked), lets the
delete or the other ingest happen, then lets go.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from rag_helpers import Rag
from sqlalchemy import text

from amelia.v1 import rag_pb2
from amelia_rag.embeddings import Progress

T = TypeVar("T")

# Waiters on the advisory lock of one document identity, in this database.
_WAITERS = text(
    """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(:key, 0)
    """
)


def _key(path: str) -> str:
    return f"amelia.rag.document:file:{path}"


def _text(tag: str, sections: int) -> bytes:
    """A Markdown document of `sections` sections (the chunk count grows with it)."""
    return f"# Harbour log {tag}\n\n".encode() + b"".join(
        f"## Day {i}\n\nThe keeper {tag} lit lamp {i} at dusk and logged the tide at {i}.\n\n"
        "".encode()
        for i in range(sections)
    )


def _id(name: str) -> uuid.UUID:
    return uuid.UUID(name.removeprefix("documents/"))


@asynccontextmanager
async def _holding(rag: Rag, path: str) -> AsyncIterator[None]:
    """The advisory lock ingests of `path` take to store it, held until the block ends."""
    async with rag.store.engine.connect() as conn, conn.begin():
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": _key(path)}
        )
        yield


async def _waiting(rag: Rag, path: str, count: int, *racing: asyncio.Task[Any]) -> None:
    """Until `count` ingests of `path` wait on its lock (or one of `racing` has ended: it did
    not wait, which the caller's assertions then show)."""
    deadline = asyncio.get_running_loop().time() + 120
    while not any(t.done() for t in racing):
        async with rag.store.engine.connect() as conn:
            waiting = (await conn.execute(_WAITERS, {"key": _key(path)})).scalar_one()
        if waiting >= count:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{count} ingests never waited"
        await asyncio.sleep(0.05)


def _ingest(rag: Rag, content: bytes, path: str) -> asyncio.Task[rag_pb2.IngestDocumentResponse]:
    return asyncio.create_task(rag.ingest(content, wait=False, file_path=path))


async def _within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, 120)


async def _not_found(rag: Rag, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name=name))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def _settled(rag: Rag, name: str, content_hash: str) -> list[tuple[str, dict[str, Any]]]:
    """The document's events once the last one is its `document.indexed` of this content."""
    assert await rag.indexed(name, timeout=300) == "ready"
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        events = await rag.events(name)
        last_type, last = events[-1] if events else ("", {})
        if last_type == "document.indexed" and last["content_hash"] == content_hash:
            return events
        assert asyncio.get_running_loop().time() < deadline, events
        await asyncio.sleep(0.2)


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _uploaded(events: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, bool]]:
    return [
        (d["content_hash"], d["replaces_previous"]) for t, d in events if t == "document.uploaded"
    ]


def _tail(events: Sequence[tuple[str, dict[str, Any]]]) -> Sequence[tuple[str, dict[str, Any]]]:
    """The events after the last `document.uploaded`."""
    last = max(i for i, (t, _) in enumerate(events) if t == "document.uploaded")
    return events[last + 1 :]


def _after_last_upload(events: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    return [t for t, _ in _tail(events)]


async def _deleted_for_good(rag: Rag, name: str, events_before: list[str]) -> None:
    """The deleted document stays deleted: NOT_FOUND, no chunks, its events end with deleted."""
    await _not_found(rag, name)
    assert await rag.store.count_chunks(_id(name)) == 0
    events = [t for t, _ in await rag.events(name, wait_for="document.deleted")]
    assert events == [*events_before, "document.deleted"]


async def test_a_reingest_committing_after_a_delete_makes_a_new_document(rag: Rag) -> None:
    """QA F5: the delete answered OK while the re-ingest was parsing; the re-ingest then came
    back with the deleted name and `replaces_previous: true`."""
    path = f"/race/{uuid.uuid4().hex}.md"
    first = await rag.ingest(_text("one", 12), file_path=path)
    name = first.document.name
    changed = _text("two", 30)
    async with _holding(rag, path):
        reingest = _ingest(rag, changed, path)
        await _waiting(rag, path, 1, reingest)
        await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name))
        await _not_found(rag, name)
    reply = await _within(reingest)
    assert reply.document.name != name, "the deleted document came back under its name"
    assert not reply.unchanged and reply.document.content_hash == _sha(changed)
    await _deleted_for_good(rag, name, ["document.uploaded", "document.indexed"])
    events = await _settled(rag, reply.document.name, _sha(changed))
    assert _uploaded(events) == [(_sha(changed), False)]
    assert (await rag.store.find(f"file:{path}")) is not None
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=reply.document.name))


async def test_an_unchanged_reingest_committing_after_a_delete_makes_a_new_document(
    rag: Rag,
) -> None:
    """The same bytes again: not `unchanged` of a document deleted meanwhile."""
    path = f"/race/{uuid.uuid4().hex}.md"
    content = _text("same", 12)
    first = await rag.ingest(content, file_path=path)
    name = first.document.name
    async with _holding(rag, path):
        reingest = _ingest(rag, content, path)
        await _waiting(rag, path, 1, reingest)
        await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name))
    reply = await _within(reingest)
    assert reply.document.name != name and not reply.unchanged
    await _deleted_for_good(rag, name, ["document.uploaded", "document.indexed"])
    events = await _settled(rag, reply.document.name, _sha(content))
    assert _uploaded(events) == [(_sha(content), False)]
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=reply.document.name))


async def test_two_first_ingests_of_one_name_give_one_document_with_the_later_content(
    rag: Rag,
) -> None:
    """Both read "no such document"; the one storing second replaces the first's and says so
    (it said `replaces_previous: false` of the document it had just replaced)."""
    path = f"/race/{uuid.uuid4().hex}.md"
    earlier, later = _text("early", 10), _text("late", 25)
    async with _holding(rag, path):
        first = _ingest(rag, earlier, path)
        await _waiting(rag, path, 1, first)
        second = _ingest(rag, later, path)
        await _waiting(rag, path, 2, first, second)
    a, b = await _within(asyncio.gather(first, second))
    assert a.document.name == b.document.name
    row = await rag.store.find(f"file:{path}")
    assert row is not None and f"documents/{row.id}" == b.document.name
    assert row.content_hash == _sha(later) and row.chunk_count == b.document.chunk_count
    events = await _settled(rag, b.document.name, _sha(later))
    assert _uploaded(events) == [(_sha(earlier), False), (_sha(later), True)]
    # Nothing of the earlier content told after the later one was stored.
    assert set(_after_last_upload(events)) <= {"document.progress", "document.indexed"}
    totals = {d["total"] for t, d in _tail(events) if t == "document.progress"}
    assert totals <= {b.document.chunk_count}
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=b.document.name))


async def test_two_reingests_and_a_delete_give_one_new_document_with_the_later_content(
    rag: Rag,
) -> None:
    """QA's race: two re-ingests of a name and a delete of it; the delete answered first."""
    path = f"/race/{uuid.uuid4().hex}.md"
    first = await rag.ingest(_text("orig", 8), file_path=path)
    name = first.document.name
    earlier, later = _text("early", 10), _text("late", 25)
    async with _holding(rag, path):
        one = _ingest(rag, earlier, path)
        await _waiting(rag, path, 1, one)
        two = _ingest(rag, later, path)
        await _waiting(rag, path, 2, one, two)
        await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name))
    a, b = await _within(asyncio.gather(one, two))
    assert a.document.name == b.document.name != name
    await _deleted_for_good(rag, name, ["document.uploaded", "document.indexed"])
    row = await rag.store.find(f"file:{path}")
    assert row is not None and f"documents/{row.id}" == b.document.name
    assert row.content_hash == _sha(later)
    events = await _settled(rag, b.document.name, _sha(later))
    assert _uploaded(events) == [(_sha(earlier), False), (_sha(later), True)]
    assert set(_after_last_upload(events)) <= {"document.progress", "document.indexed"}
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=b.document.name))


class _HeldEmbedder:
    """The service's model, its first `embed` held until the test lets it go."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dimension = inner.dimension
        self.signature = inner.signature
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.calls = 0

    async def embed(self, texts: Sequence[str], on_progress: Progress | None = None) -> np.ndarray:
        self.calls += 1
        self.entered.set()
        await self.gate.wait()
        result: np.ndarray = await self.inner.embed(texts, on_progress)
        return result

    async def embed_query(self, text: str) -> np.ndarray:
        result: np.ndarray = await self.inner.embed_query(text)
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_delete_stops_the_indexing_of_a_reingest(rag: Rag) -> None:
    """Deleted while a batch of the re-ingested content is being embedded: the batch is not
    saved, indexing stops, no chunk is left and no event follows `document.deleted`."""
    from amelia_common.eventlog import EventLog
    from amelia_common.eventlog.outbox import Outbox
    from amelia_rag.embeddings import LocalEmbedder
    from amelia_rag.indexer import Indexer
    from amelia_rag.server import EVENT_SOURCE, OUTBOX_TABLE
    from amelia_rag.store import DocumentStore

    path = f"/race/{uuid.uuid4().hex}.md"
    first = await rag.ingest(_text("one", 8), file_path=path)
    name = first.document.name
    reingest = await rag.ingest(_text("two", 200), wait=False, file_path=path)
    assert reingest.document.name == name and reingest.document.chunk_count > 64
    # This test's indexer (a replica) takes the document over from the service's, which
    # loses it at its next save.
    async with rag.store.engine.connect() as conn, conn.begin():
        taken = await conn.execute(
            text(
                "UPDATE documents SET lease_owner = 'race-test', "
                "lease_until = now() + interval '10 minutes', index_attempts = 1 "
                "WHERE id = :d AND state = 'indexing'"
            ),
            {"d": _id(name)},
        )
        assert taken.rowcount == 1, "the service's indexer finished 200 chunks at once?"
    embedder = _HeldEmbedder(LocalEmbedder.from_model(rag.model, rag.settings))
    outbox = Outbox(rag.store.sessions, EventLog(rag.nc, rag.settings, EVENT_SOURCE), OUTBOX_TABLE)
    store = DocumentStore(rag.store.engine, rag.store.sessions, outbox)
    indexer = Indexer(store, embedder, batch_size=16)  # type: ignore[arg-type]
    indexer.owner = "race-test"
    row = await store.get(_id(name))
    assert row is not None
    indexing = asyncio.create_task(indexer.index(row))
    try:
        await _within(embedder.entered.wait())
        await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name))
        embedder.gate.set()
        await _within(indexing)
    finally:
        embedder.gate.set()
        await embedder.aclose()
    assert embedder.calls == 1, "indexing went on after the delete"
    assert await rag.store.count_chunks(_id(name)) == 0
    await outbox.deliver()
    events = [t for t, _ in await rag.events(name, wait_for="document.deleted")]
    assert events[-1] == "document.deleted" and events.count("document.deleted") == 1
    assert events[:3] == ["document.uploaded", "document.indexed", "document.uploaded"]
    assert set(events[3:-1]) <= {"document.progress"}
    await _not_found(rag, name)
