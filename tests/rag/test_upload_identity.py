"""A browser's upload of a file `amelia ingest` stored updates that document (QA s26), and
`amelia ingest` of a file a browser uploaded first adopts the browser's document (s28).

`amelia ingest` names a file by its path; a browser cannot send one, so the dashboard's upload
is named by its file name only, and made a second document of the same file: every search then
found each passage twice. Now an upload named by its title only whose title and bytes a stored
document holds is a re-ingest of that document, and an ingest of a file (a path or URI) whose
title and bytes a document named by its title only holds adopts it: the document takes the
path (docs/rag.md, "Document identity"). Concurrent ones make one document: arranged, not hoped
for — the test holds the lock an ingest takes to store until PostgreSQL shows the racing
ingests waiting on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from rag_helpers import Rag
from sqlalchemy import text

from amelia.v1 import rag_pb2

# Waiters on one advisory lock, in this database (as tests/rag/test_ingest_races.py).
_WAITERS = text(
    """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(:key, 0)
    """
)


def _text(tag: str) -> bytes:
    return (
        f"# Tide tables {tag}\n\n## Spring\n\nHigh water {tag} at six; the ferry waits.\n\n"
        f"## Neap\n\nLow water {tag} at noon; the mudflats show.\n"
    ).encode()


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _cli(path: str) -> dict[str, str]:
    """The DocumentSource `amelia ingest` sends for a file (libs/cli: its path and URI)."""
    return {"file_path": path, "source_uri": f"file://{path}"}


async def _browser(rag: Rag, content: bytes, title: str, **source: Any) -> Any:
    """UploadDocument as the gateway streams a browser's multipart upload: a title, no path."""

    async def parts() -> AsyncIterator[rag_pb2.UploadDocumentRequest]:
        yield rag_pb2.UploadDocumentRequest(source=rag_pb2.DocumentSource(title=title, **source))
        yield rag_pb2.UploadDocumentRequest(content=content)

    return await rag.stub.UploadDocument(parts())


async def _names(rag: Rag, content: bytes) -> list[str]:
    """The documents holding these bytes."""
    async with rag.store.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id FROM documents WHERE content_hash = :h"), {"h": _sha(content)}
        )
        return sorted(f"documents/{r[0]}" for r in rows)


async def _delete(rag: Rag, *names: str) -> None:
    for name in set(names):
        await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name))


async def test_a_browser_upload_of_an_ingested_file_is_that_document(rag: Rag) -> None:
    tag = uuid.uuid4().hex[:8]
    path = f"/home/u/notes/tides-{tag}.md"
    content = _text(tag)
    ingested = await rag.ingest(content, **_cli(path))
    name = ingested.document.name
    assert ingested.document.title == f"tides-{tag}.md"

    again = await _browser(rag, content, f"tides-{tag}.md")
    assert again.document.name == name, "the browser's upload made a second document"
    assert again.unchanged, again
    assert (again.document.file_path, again.document.source_uri) == (path, f"file://{path}")
    assert await _names(rag, content) == [name]
    # The usual re-ingest rules: metadata sent replaces the document's (not indexed again).
    tagged = await _browser(rag, content, f"tides-{tag}.md", metadata={"team": "harbour"})
    assert tagged.document.name == name and not tagged.unchanged
    assert dict(tagged.document.metadata) == {"team": "harbour"}
    assert tagged.document.file_path == path
    # `amelia ingest` of the file again: its document, as ever.
    cli = await rag.stub.IngestDocument(
        rag_pb2.IngestDocumentRequest(
            source=rag_pb2.DocumentSource(file_path=path, source_uri=f"file://{path}"),
            content=content,
        )
    )
    assert cli.document.name == name

    # Another name, or other bytes: not that file (a browser cannot say which file it is).
    renamed = await _browser(rag, content, f"copy-{tag}.md")
    edited = _text(f"{tag} edited")
    changed = await _browser(rag, edited, f"tides-{tag}.md")
    assert len({name, renamed.document.name, changed.document.name}) == 3
    # …and the browser's own document is re-uploaded as before (its title is its identity).
    assert (await _browser(rag, edited, f"tides-{tag}.md")).document.name == changed.document.name
    await _delete(rag, name, renamed.document.name, changed.document.name)


@asynccontextmanager
async def _holding(rag: Rag, key: str) -> AsyncIterator[None]:
    async with rag.store.engine.connect() as conn, conn.begin():
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key}
        )
        yield


async def _waiting(rag: Rag, keys: list[str], count: int, *racing: asyncio.Task[Any]) -> None:
    """Until `count` ingests wait on one of `keys` (or one of `racing` ended without waiting:
    the caller's assertions then show it)."""
    deadline = asyncio.get_running_loop().time() + 120
    while not any(t.done() for t in racing):
        async with rag.store.engine.connect() as conn:
            waiting = [(await conn.execute(_WAITERS, {"key": k})).scalar_one() for k in keys]
        if sum(waiting) >= count:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{count} ingests never waited"
        await asyncio.sleep(0.05)


async def test_concurrent_uploads_of_an_ingested_files_bytes_make_no_second_document(
    rag: Rag,
) -> None:
    """Two browser uploads at once of a file already ingested: both are that document."""
    tag = uuid.uuid4().hex[:8]
    content = _text(tag)
    first = await rag.ingest(content, **_cli(f"/srv/docs/race-{tag}.md"))
    # Both uploads read their hint before storing; the first then waits on the name's lock (the
    # test holds it), the second on the bytes' lock (the first holds it; without that lock, on
    # the name's too).
    key = f"amelia.rag.document:title:race-{tag}.md"
    locks = [key, f"amelia.rag.content:{_sha(content)}"]
    async with _holding(rag, key):
        one = asyncio.create_task(_browser(rag, content, f"race-{tag}.md"))
        await _waiting(rag, locks, 1, one)
        two = asyncio.create_task(_browser(rag, content, f"race-{tag}.md"))
        await _waiting(rag, locks, 2, one, two)
    a, b = await asyncio.wait_for(asyncio.gather(one, two), 120)
    assert a.document.name == b.document.name == first.document.name
    assert await _names(rag, content) == [first.document.name]
    await _delete(rag, first.document.name)


async def test_a_browser_upload_racing_the_files_first_ingest_makes_one_document(
    rag: Rag,
) -> None:
    """`amelia ingest` of a new file and a browser's upload of it store at once, the ingest
    first: the upload sees the file's document. The test holds the ingest at its name's lock,
    after it took the bytes' lock; the upload waits on the bytes' lock until the ingest has
    stored (without that lock it found no document yet, and made a second one)."""
    tag = uuid.uuid4().hex[:8]
    content = _text(tag)
    path = f"/srv/docs/first-{tag}.md"
    name_lock = f"amelia.rag.document:file:{path}"
    locks = [name_lock, f"amelia.rag.content:{_sha(content)}"]
    async with _holding(rag, name_lock):
        cli = asyncio.create_task(rag.ingest(content, wait=False, **_cli(path)))
        await _waiting(rag, locks, 1, cli)
        browser = asyncio.create_task(_browser(rag, content, f"first-{tag}.md"))
        await _waiting(rag, locks, 2, cli, browser)
    ingested, uploaded = await asyncio.wait_for(asyncio.gather(cli, browser), 120)
    assert uploaded.document.name == ingested.document.name
    assert uploaded.document.file_path == path
    assert await _names(rag, content) == [ingested.document.name]
    await _delete(rag, ingested.document.name)


async def _listed(rag: Rag, title: str) -> list[Any]:
    """ListDocuments' documents of this title (every page: other tests' documents share it)."""
    found, token = [], ""
    while True:
        page = await rag.stub.ListDocuments(
            rag_pb2.ListDocumentsRequest(page_size=100, page_token=token)
        )
        found += [d for d in page.documents if d.title == title]
        if not (token := page.next_page_token):
            return found


async def _passages(rag: Rag, tag: str) -> list[tuple[str, str]]:
    """(document, passage) of every hit a search for the tagged text finds."""
    reply = await rag.stub.Search(
        rag_pb2.SearchRequest(query=f"high water {tag} ferry", top_k=20, min_score=0)
    )
    return [(h.document, h.content) for h in reply.hits if tag in h.content]


@pytest.mark.parametrize(
    "where",
    [
        _cli,
        lambda path: {"source_uri": f"https://example.org{path}"},
    ],
    ids=["amelia-ingest", "source-uri"],
)
async def test_ingesting_a_file_a_browser_uploaded_first_adopts_its_document(
    rag: Rag, where: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    title = f"tides-{tag}.md"
    path = f"/home/u/notes/{title}"
    content = _text(tag)
    uploaded = await _browser(rag, content, title, metadata={"team": "harbour"})
    name = uploaded.document.name
    assert await rag.indexed(name) == "ready"
    chunks = await rag.store.count_chunks()

    source = where(path)
    ingested = await rag.ingest(content, **source)
    assert ingested.document.name == name, "the ingest made a second document of the file"
    # The browser's document now is the file's, not indexed again; `refreshed` (its path, URI
    # and metadata moved: none sent clears it, as for any re-ingest).
    assert not ingested.unchanged
    shown = (ingested.document.file_path, ingested.document.source_uri)
    assert shown == (source.get("file_path", ""), source["source_uri"])
    assert ingested.document.title == title and dict(ingested.document.metadata) == {}
    assert ingested.document.state == rag_pb2.DOCUMENT_STATE_READY
    assert await rag.store.count_chunks() == chunks
    assert await _names(rag, content) == [name]
    got = (await rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name=name))).document
    assert (got.file_path, got.source_uri) == shown
    assert [(d.name, d.file_path, d.source_uri) for d in await _listed(rag, title)] == [
        (name, *shown)
    ]
    hits = await _passages(rag, tag)
    assert hits and {d for d, _ in hits} == {name}, hits
    assert len({p for _, p in hits}) == len(hits), "a passage was found twice"
    # Its identity is now the file's: ingesting the file again is that document, unchanged;
    # a browser's upload of it too (session 27's rule).
    assert (await rag.ingest(content, **source)).unchanged
    assert (await _browser(rag, content, title)).document.name == name
    events = [t for t, _ in await rag.events(name)]
    assert events.count("document.uploaded") == 1, events
    await _delete(rag, name)


async def test_an_ingest_of_other_bytes_or_another_file_name_is_a_document_of_its_own(
    rag: Rag,
) -> None:
    tag = uuid.uuid4().hex[:8]
    content = _text(tag)
    uploaded = await _browser(rag, content, f"tides-{tag}.md")
    edited = await rag.ingest(_text(f"{tag} edited"), wait=False, **_cli(f"/n/tides-{tag}.md"))
    renamed = await rag.ingest(content, wait=False, **_cli(f"/n/copy-{tag}.md"))
    # A title sent is the ingest's title: not the name the browser uploaded the file under.
    titled = await rag.ingest(
        content, wait=False, title=f"Tides {tag}", **_cli(f"/m/tides-{tag}.md")
    )
    names = {d.document.name for d in (uploaded, edited, renamed, titled)}
    assert len(names) == 4
    got = (
        await rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name=uploaded.document.name))
    ).document
    assert (got.file_path, got.source_uri) == ("", "")
    await _delete(rag, *names)


async def test_a_document_with_its_own_path_is_never_adopted(rag: Rag) -> None:
    """Only a document named by its title only is adopted: the same bytes and file name from
    another folder are another file."""
    tag = uuid.uuid4().hex[:8]
    content = _text(tag)
    first = await rag.ingest(content, wait=False, **_cli(f"/a/tides-{tag}.md"))
    other = await rag.ingest(content, wait=False, **_cli(f"/b/tides-{tag}.md"))
    assert other.document.name != first.document.name
    assert other.document.file_path == f"/b/tides-{tag}.md"
    # A browser's upload whose document another folder's file then adopted: not taken again.
    later = _text(f"{tag} later")
    uploaded = await _browser(rag, later, f"notes-{tag}.md")
    adopted = await rag.ingest(later, wait=False, **_cli(f"/a/notes-{tag}.md"))
    assert adopted.document.name == uploaded.document.name
    again = await rag.ingest(later, wait=False, **_cli(f"/b/notes-{tag}.md"))
    assert again.document.name != adopted.document.name
    got = (
        await rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name=adopted.document.name))
    ).document
    assert got.file_path == f"/a/notes-{tag}.md"
    assert await _names(rag, content) == sorted([first.document.name, other.document.name])
    await _delete(
        rag, first.document.name, other.document.name, adopted.document.name, again.document.name
    )


async def test_an_ingest_racing_the_browser_upload_of_a_new_file_makes_one_document(
    rag: Rag,
) -> None:
    """A browser's upload of a new file and `amelia ingest` of it store at once, the upload
    first: the ingest adopts the upload's document. The test holds the upload at its name's
    lock, after it took the bytes' lock; the ingest, which found no document before parsing,
    waits on the bytes' lock until the upload has stored (old code: a second document)."""
    tag = uuid.uuid4().hex[:8]
    content = _text(tag)
    title = f"second-{tag}.md"
    path = f"/srv/docs/{title}"
    name_lock = f"amelia.rag.document:title:{title}"
    locks = [name_lock, f"amelia.rag.content:{_sha(content)}"]
    async with _holding(rag, name_lock):
        browser = asyncio.create_task(_browser(rag, content, title))
        await _waiting(rag, locks, 1, browser)
        cli = asyncio.create_task(rag.ingest(content, wait=False, **_cli(path)))
        await _waiting(rag, locks, 2, browser, cli)
    uploaded, ingested = await asyncio.wait_for(asyncio.gather(browser, cli), 120)
    assert ingested.document.name == uploaded.document.name
    assert not ingested.unchanged
    assert ingested.document.file_path == path
    got = (
        await rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name=uploaded.document.name))
    ).document
    assert got.file_path == path
    assert await _names(rag, content) == [uploaded.document.name]
    await _delete(rag, uploaded.document.name)
