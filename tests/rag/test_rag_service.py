"""RagService end to end: real PostgreSQL + pgvector, real NATS, the real model, over gRPC."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from rag_helpers import INLINE_LIMIT, UPLOAD_LIMIT, Rag
from rag_pdf import make_pdf
from sqlalchemy import text

from amelia.v1 import rag_pb2
from amelia_rag.embeddings import LocalEmbedder
from amelia_rag.server import StartupError, build_service
from amelia_rag.store import vector_literal

FIXTURES = Path(__file__).parent / "fixtures"
PLANETS_PDF = make_pdf(
    [
        [
            "Mars is the fourth planet from the Sun.",
            "It has two small moons, Phobos and Deimos, probably captured asteroids.",
            "A day on Mars lasts 24 hours and 37 minutes.",
        ],
        [
            "Jupiter is the largest planet of the solar system.",
            "Its Great Red Spot is a storm wider than the Earth that has raged for centuries.",
        ],
        [
            "Saturn's rings are made of ice and rock, from grains of dust to boulders.",
            "They are hundreds of thousands of kilometres wide but only about ten metres thick.",
        ],
    ],
    title="Notes on the planets",
)


def corpus_files() -> list[Path]:
    """The fixtures, rag.md among them: a copy of docs/rag.md, frozen so that editing the
    docs cannot move these tests' rankings (and the corpus stays quick to embed)."""
    return sorted(p for p in FIXTURES.iterdir() if p.is_file())


@dataclass
class Corpus:
    names: dict[str, str]  # file name -> document name
    texts: dict[str, str]  # file name -> source text (text files)


@pytest.fixture(scope="module")
async def corpus(rag: Rag) -> Corpus:
    files = corpus_files()
    names: dict[str, str] = {}

    contents = {p: p.read_bytes() for p in files}

    async def one(path: Path) -> None:
        reply = await rag.ingest(contents[path], file_path=str(path))
        assert reply.document.chunk_count > 0
        names[path.name] = reply.document.name

    await asyncio.gather(*(one(p) for p in files))
    reply = await rag.ingest(PLANETS_PDF, file_path="/corpus/planets.pdf")
    names["planets.pdf"] = reply.document.name
    return Corpus(names, {p.name: p.read_text() for p in files})


# (question, document, heading that must be on the hit's path or page, words in the passage)
QUESTIONS: list[tuple[str, str, str | int, str]] = [
    ("How often should I water tomato plants?", "garden_guide.md", "Watering tomatoes", "deep"),
    ("What causes blossom end rot?", "garden_guide.md", "Watering tomatoes", "calcium"),
    ("When should roses be pruned?", "garden_guide.md", "Pruning roses", "late winter"),
    ("How do I keep dahlia tubers over winter?", "garden_guide.md", "Dahlias over winter", "peat"),
    ("What ratio of green and brown material goes into compost?", "garden_guide.md",
     "Making compost", "three parts brown"),
    ("How do I make a sourdough starter?", "sourdough.html", "Sourdough starter", "rye"),
    ("Why is my bread dense?", "sourdough.html", "Troubleshooting", "under-proofed"),
    ("pancake recipe with buttermilk", "sourdough.html", "Pancakes", "buttermilk"),
    ("great-circle distance between two points", "geo.py", "def haversine_km", "asin"),
    ("order delivery stops so the driver travels less", "geo.py", "class RoutePlanner",
     "Orders delivery stops"),
    ("How are HTTP requests rejected when the rate limit is exceeded?", "ratelimit.go", "func Middleware", "429"),
    ("Which moons does Mars have?", "planets.pdf", 1, "Phobos"),
    ("How big is the storm on Jupiter?", "planets.pdf", 2, "Great Red Spot"),
    ("How thick are Saturn's rings?", "planets.pdf", 3, "ten metres"),
    ("Can the barcode scanner work offline?", "release_notes.txt", "", "queued"),
    ("How is a document identified when it is ingested again?", "rag.md",
     "Document identity and re-ingesting", "file_path"),
    ("What does min_score apply to in hybrid search?", "rag.md", "Modes and scores",
     "vector similarity only"),
    ("Which events are published when a document is indexed?", "rag.md", "Events",
     "document.indexed"),
    ("How do I use Ollama for embeddings?", "rag.md", "Embeddings", "11434"),
]  # fmt: skip


def _matches(
    hit: rag_pb2.SearchHit, corpus: Corpus, doc: str, where: str | int, words: str
) -> bool:
    if hit.document != corpus.names[doc] or words not in hit.content:
        return False
    if isinstance(where, int):
        return hit.page == where
    return not where or any(where in h for h in hit.heading_path)


@pytest.mark.parametrize(
    "mode", [rag_pb2.SEARCH_MODE_UNSPECIFIED, rag_pb2.SEARCH_MODE_VECTOR], ids=["hybrid", "vector"]
)
async def test_known_questions_find_the_right_passage_in_the_top_3(
    rag: Rag, corpus: Corpus, mode: rag_pb2.SearchMode.ValueType
) -> None:
    misses = []
    for question, doc, where, words in QUESTIONS:
        request = rag_pb2.SearchRequest(query=question, top_k=3, mode=mode)
        if mode == rag_pb2.SEARCH_MODE_VECTOR:
            request.min_score = 0.2  # 0.7 (the default) is strict for MiniLM question→passage
        hits = (await rag.stub.Search(request)).hits
        if not any(_matches(h, corpus, doc, where, words) for h in hits):
            misses.append((question, [(h.document_title, list(h.heading_path)) for h in hits]))
    assert not misses, misses


async def test_hits_cite_exact_source_slices(rag: Rag, corpus: Corpus) -> None:
    # Within the corpus: other tests' documents share the service, and their texts are not here.
    reply = await rag.stub.Search(
        rag_pb2.SearchRequest(
            query="watering tomatoes", top_k=10, min_score=0, documents=corpus.names.values()
        )
    )
    assert reply.hits
    for hit in reply.hits:
        file_offsets = (
            rag_pb2.DOCUMENT_TYPE_MARKDOWN,
            rag_pb2.DOCUMENT_TYPE_TEXT,
            rag_pb2.DOCUMENT_TYPE_CODE,
        )
        if hit.document_type in file_offsets:  # offsets into the file itself
            source = corpus.texts[hit.document_title]
            assert source[hit.start_offset : hit.end_offset] == hit.content
        assert hit.score > 0 and hit.chunk_index >= 0
    top = reply.hits[0]
    assert top.document_type == rag_pb2.DOCUMENT_TYPE_MARKDOWN
    assert list(top.heading_path) == [
        "The Small Garden Handbook",
        "Vegetables",
        "Watering tomatoes",
    ]
    assert top.vector_score > 0.5


async def test_types_are_detected(rag: Rag, corpus: Corpus) -> None:
    expected = {
        "garden_guide.md": rag_pb2.DOCUMENT_TYPE_MARKDOWN,
        "sourdough.html": rag_pb2.DOCUMENT_TYPE_HTML,
        "geo.py": rag_pb2.DOCUMENT_TYPE_CODE,
        "ratelimit.go": rag_pb2.DOCUMENT_TYPE_CODE,
        "release_notes.txt": rag_pb2.DOCUMENT_TYPE_TEXT,
        "planets.pdf": rag_pb2.DOCUMENT_TYPE_PDF,
    }
    for file, doc_type in expected.items():
        got = await rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name=corpus.names[file]))
        assert got.document.type == doc_type, file
        assert got.document.title == file


async def test_reingesting_unchanged_files_does_no_work(rag: Rag, corpus: Corpus) -> None:
    chunks_before = await rag.store.count_chunks()
    calls, texts = rag.model.calls, rag.model.texts
    events_before = await rag.events(corpus.names["garden_guide.md"])
    for path in corpus_files():
        reply = await rag.ingest(path.read_bytes(), file_path=str(path))
        assert reply.unchanged, path
        assert reply.document.name == corpus.names[path.name]
    reply = await rag.ingest(PLANETS_PDF, file_path="/corpus/planets.pdf")
    assert reply.unchanged
    assert (rag.model.calls, rag.model.texts) == (calls, texts), "re-ingest ran the model"
    assert await rag.store.count_chunks() == chunks_before
    assert await rag.events(corpus.names["garden_guide.md"]) == events_before


async def test_changed_file_replaces_its_chunks(rag: Rag) -> None:
    path = f"/tmp/changing-{uuid.uuid4().hex}.md"
    v1 = b"# Changelog\n\nThe flux capacitor needs 1.21 gigawatts of power to start.\n"
    first = await rag.ingest(v1, file_path=path, title="changelog")
    doc_id = uuid.UUID(first.document.name.split("/")[1])
    old_ids = await _chunk_ids(rag, doc_id)
    v2 = b"# Changelog\n\nThe warp core is fed with dilithium crystals.\n\n" + b"More. " * 300
    calls = rag.model.calls
    second = await rag.ingest(v2, file_path=path, title="changelog")
    assert rag.model.calls > calls
    assert not second.unchanged
    assert second.document.name == first.document.name
    assert second.document.content_hash != first.document.content_hash
    new_ids = await _chunk_ids(rag, doc_id)
    assert new_ids and not (old_ids & new_ids), "old chunks survived"
    assert len(new_ids) == second.document.chunk_count > 1
    only_this = rag_pb2.SearchRequest(
        query="flux capacitor gigawatts",
        documents=[first.document.name],
        mode=rag_pb2.SEARCH_MODE_KEYWORD,
    )
    assert not (await rag.stub.Search(only_this)).hits
    only_this.query = "dilithium crystals"
    assert (await rag.stub.Search(only_this)).hits
    assert second.document.create_time == first.document.create_time
    assert second.document.update_time.ToDatetime() > first.document.update_time.ToDatetime()
    events = await rag.events(first.document.name, wait_for="document.indexed")
    uploaded = [d for t, d in events if t == "document.uploaded"]
    assert [u["replaces_previous"] for u in uploaded] == [False, True]
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=first.document.name))


async def test_new_metadata_on_unchanged_content_is_stored_without_embedding(rag: Rag) -> None:
    """The document refreshed, not indexed again — and the reply says it changed: `unchanged`
    is false (QA F6: it said `unchanged` of a document whose metadata it had replaced)."""
    path = f"/tmp/meta-{uuid.uuid4().hex}.txt"
    content = b"Metadata-only updates should not re-embed anything at all."
    await rag.ingest(content, file_path=path, metadata=_struct({"owner": "ana"}))
    calls = rag.model.calls
    reply = await rag.ingest(content, file_path=path, metadata=_struct({"owner": "bo", "v": 2}))
    assert not reply.unchanged and rag.model.calls == calls
    assert reply.document.state == rag_pb2.DOCUMENT_STATE_READY  # not sent back to indexing
    assert dict(reply.document.metadata) == {"owner": "bo", "v": 2}
    listed = await rag.stub.ListDocuments(
        rag_pb2.ListDocumentsRequest(metadata_filter={"owner": "bo", "v": "2"})
    )
    assert [d.name for d in listed.documents] == [reply.document.name]
    again = await rag.ingest(content, file_path=path, metadata=_struct({"owner": "bo", "v": 2}))
    assert again.unchanged, "the same content and metadata: nothing changed"
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=reply.document.name))


async def test_unchanged_content_sent_without_metadata_clears_it_and_says_so(rag: Rag) -> None:
    """QA F6: the same bytes again without metadata cleared the document's metadata (the
    request's replaces it, as documented) while the reply said `unchanged`; over
    UploadDocument too."""
    path = f"/tmp/meta-{uuid.uuid4().hex}.txt"
    content = b"A note about the curlew's call over the estuary at dawn."
    first = await rag.ingest(content, file_path=path, metadata=_struct({"owner": "ana"}))
    events = await rag.events(first.document.name)
    cleared = await rag.ingest(content, file_path=path)
    assert not cleared.unchanged, "its metadata was cleared: not unchanged"
    assert dict(cleared.document.metadata) == {}
    assert cleared.document.state == rag_pb2.DOCUMENT_STATE_READY
    assert await rag.events(first.document.name) == events  # nothing indexed again

    async def upload(metadata: dict[str, Any]) -> rag_pb2.UploadDocumentResponse:
        async def parts() -> AsyncIterator[rag_pb2.UploadDocumentRequest]:
            source = rag_pb2.DocumentSource(file_path=path, metadata=_struct(metadata))
            yield rag_pb2.UploadDocumentRequest(source=source)
            yield rag_pb2.UploadDocumentRequest(content=content)

        reply: rag_pb2.UploadDocumentResponse = await rag.stub.UploadDocument(parts())
        return reply

    assert (await upload({})).unchanged
    tagged = await upload({"owner": "bo"})
    assert not tagged.unchanged and dict(tagged.document.metadata) == {"owner": "bo"}
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=first.document.name))


async def test_delete_removes_the_document_and_its_chunks(rag: Rag) -> None:
    reply = await rag.ingest(
        b"# Temporary\n\nA short-lived note about zebras.\n", file_path="/tmp/zebras.md"
    )
    name = reply.document.name
    doc_id = uuid.UUID(name.split("/")[1])
    assert await rag.store.count_chunks(doc_id) == reply.document.chunk_count > 0
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name))
    assert await rag.store.count_chunks(doc_id) == 0
    for call in (
        rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name=name)),
        rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    events = await rag.events(name, wait_for="document.deleted")
    assert [t for t, _ in events] == ["document.uploaded", "document.indexed", "document.deleted"]
    indexed = dict(events)["document.indexed"]
    assert indexed["chunk_count"] == reply.document.chunk_count
    assert indexed["duration_ms"] > 0


@pytest.fixture
async def crowded(rag: Rag) -> AsyncIterator[tuple[list[str], np.ndarray]]:
    """Two 'alpha' documents with 6 chunks in all, far from the query, and 600 noise chunks
    (written directly) that are all nearer to it: only a filter that keeps scanning finds
    the alpha chunks."""
    alpha = []
    for i in range(2):
        # Sections of ~450 characters: one chunk each, too long for a passage to read on into
        # the next one whole, and with no sentence end in it to read on to (a passage reads on
        # by whole sentences), so each chunk is a distinct hit.
        body = "\n\n".join(
            f"## Section {i}-{j}\n\n"
            + " ".join([f"Quarterly figures for region {j}: revenue grew by {j} percent;"] * 7)
            for j in range(3)
        )
        reply = await rag.ingest(
            f"# Report {i}\n\n{body}\n".encode(),
            file_path=f"/tmp/alpha-{i}-{uuid.uuid4().hex}.md",
            metadata=_struct({"team": "alpha", "year": 2024}),
        )
        alpha.append(reply.document.name)
    query = "How do volcanoes erupt?"
    qvec = np.asarray(rag.model.encode([query], normalize_embeddings=True)[0], dtype=np.float32)
    rng = np.random.default_rng(7)
    noise_docs = []
    async with rag.store.sessions() as session, session.begin():
        for d in range(6):
            doc_id = uuid.uuid4()
            noise_docs.append(doc_id)
            await session.execute(
                text(
                    "INSERT INTO documents (id, identity, title, type, size_bytes, content_hash,"
                    " index_signature, metadata, chunk_count) VALUES (:id, :identity, :title,"
                    " 'text', 1, 'x', 'synthetic', CAST(:meta AS jsonb), 100)"
                ),
                {
                    "id": doc_id,
                    "identity": f"synthetic:{doc_id}",
                    "title": f"noise {d}",
                    "meta": '{"team": "beta"}',
                },
            )
            rows = []
            for c in range(100):
                v = qvec + rng.normal(0, 0.02, qvec.shape).astype(np.float32)
                v /= np.linalg.norm(v)
                rows.append(
                    {
                        "id": uuid.uuid4(),
                        "doc": doc_id,
                        "i": c,
                        "content": f"volcano noise {d}-{c}",
                        "emb": vector_literal(v),
                    }
                )
            await session.execute(
                text(
                    "INSERT INTO chunks (id, document_id, chunk_index, content, start_offset,"
                    " end_offset, embedding, tsv) VALUES (:id, :doc, :i, :content, 0, 1,"
                    " CAST(:emb AS vector), to_tsvector('english', :content))"
                ),
                rows,
            )
    yield alpha, qvec
    async with rag.store.sessions() as session, session.begin():
        await session.execute(
            text("DELETE FROM documents WHERE id = ANY(:ids)"), {"ids": noise_docs}
        )
    for name in alpha:
        await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name))


async def test_metadata_filter_returns_exactly_top_k_matching_hits(
    rag: Rag, crowded: tuple[list[str], np.ndarray]
) -> None:
    alpha, _ = crowded
    query = "How do volcanoes erupt?"
    unfiltered = await rag.stub.Search(
        rag_pb2.SearchRequest(query=query, top_k=5, min_score=-1, mode=rag_pb2.SEARCH_MODE_VECTOR)
    )
    assert all(h.document_title.startswith("noise") for h in unfiltered.hits)
    for mode in (rag_pb2.SEARCH_MODE_VECTOR, rag_pb2.SEARCH_MODE_HYBRID):
        filtered = await rag.stub.Search(
            rag_pb2.SearchRequest(
                query=query,
                top_k=5,
                min_score=-1,
                mode=mode,
                metadata_filter={"team": "alpha", "year": "2024"},
            )
        )
        assert len(filtered.hits) == 5, mode
        assert {h.document for h in filtered.hits} <= set(alpha)
    by_doc = await rag.stub.Search(
        rag_pb2.SearchRequest(
            query=query,
            top_k=10,
            min_score=-1,
            mode=rag_pb2.SEARCH_MODE_VECTOR,
            documents=[alpha[0]],
            types=[rag_pb2.DOCUMENT_TYPE_MARKDOWN],
        )
    )
    assert len(by_doc.hits) == 3 and {h.document for h in by_doc.hits} == {alpha[0]}
    keyword = await rag.stub.Search(
        rag_pb2.SearchRequest(
            query="quarterly revenue",
            top_k=4,
            mode=rag_pb2.SEARCH_MODE_KEYWORD,
            metadata_filter={"team": "alpha"},
        )
    )
    assert len(keyword.hits) == 4 and {h.document for h in keyword.hits} <= set(alpha)
    nothing = await rag.stub.Search(
        rag_pb2.SearchRequest(query=query, metadata_filter={"team": "nobody"})
    )
    assert not nothing.hits


async def test_min_score_applies_to_vector_similarity(rag: Rag, corpus: Corpus) -> None:
    query = "When should roses be pruned?"
    strict = await rag.stub.Search(
        rag_pb2.SearchRequest(query=query, min_score=0.99, mode=rag_pb2.SEARCH_MODE_VECTOR)
    )
    assert not strict.hits
    lenient = await rag.stub.Search(
        rag_pb2.SearchRequest(query=query, min_score=0.0, mode=rag_pb2.SEARCH_MODE_VECTOR, top_k=4)
    )
    assert len(lenient.hits) == 4
    assert [h.score for h in lenient.hits] == sorted((h.score for h in lenient.hits), reverse=True)
    # Keyword hits ignore it; hybrid admits keyword matches whatever their similarity.
    keyword = await rag.stub.Search(
        rag_pb2.SearchRequest(query="forsythia", min_score=0.99, mode=rag_pb2.SEARCH_MODE_KEYWORD)
    )
    assert keyword.hits and "forsythia" in keyword.hits[0].content
    hybrid = await rag.stub.Search(rag_pb2.SearchRequest(query="forsythia", min_score=0.99))
    assert hybrid.hits and hybrid.hits[0].vector_score < 0.99
    assert 0 < hybrid.hits[0].score <= 1


async def test_the_nearest_chunk_by_cosine_is_the_first_vector_hit(
    rag: Rag, corpus: Corpus
) -> None:
    """Vector search is exact on a corpus one machine holds: for each query the chunk with the
    highest cosine over every stored embedding (computed here) comes first, with that cosine."""
    async with rag.store.sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT document_id, chunk_index, embedding::text FROM chunks"
                    " WHERE embedding IS NOT NULL"
                )
            )
        ).all()
    matrix = np.array([json.loads(row[2]) for row in rows], dtype=np.float32)
    for query in ("When should roses be pruned?", "forsythia", "what does the keeper do at night"):
        vector = rag.model.encode([query], normalize_embeddings=True)[0]
        cosines = matrix @ vector
        best = rows[int(np.argmax(cosines))]
        hits = await rag.stub.Search(
            rag_pb2.SearchRequest(query=query, min_score=-1, mode=rag_pb2.SEARCH_MODE_VECTOR)
        )
        first = hits.hits[0]
        assert (first.document, first.chunk_index) == (f"documents/{best[0]}", best[1]), query
        assert first.vector_score == pytest.approx(float(cosines.max()), abs=1e-4)


async def test_list_documents_pages_and_filters(rag: Rag, corpus: Corpus) -> None:
    seen: list[str] = []
    token = ""
    while True:
        page = await rag.stub.ListDocuments(
            rag_pb2.ListDocumentsRequest(page_size=3, page_token=token)
        )
        assert len(page.documents) <= 3
        seen.extend(d.name for d in page.documents)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen))
    assert set(corpus.names.values()) <= set(seen)
    code = await rag.stub.ListDocuments(
        rag_pb2.ListDocumentsRequest(types=[rag_pb2.DOCUMENT_TYPE_CODE], page_size=100)
    )
    assert {d.title for d in code.documents} >= {"geo.py", "ratelimit.go"}
    assert all(d.type == rag_pb2.DOCUMENT_TYPE_CODE for d in code.documents)


async def test_large_upload_streams_and_reports_progress(rag: Rag) -> None:
    sections = [
        f"## Topic {i}\n\n" + f"Paragraph about subject number {i} and its many details. " * 14
        for i in range(90)
    ]
    content = ("# Big manual\n\n" + "\n\n".join(sections) + "\n").encode()
    assert INLINE_LIMIT < len(content) < UPLOAD_LIMIT

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.ingest(content, file_path="/tmp/big-manual.md")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UploadDocument" in (err.value.details() or "")

    async def parts() -> AsyncIterator[rag_pb2.UploadDocumentRequest]:
        yield rag_pb2.UploadDocumentRequest(
            source=rag_pb2.DocumentSource(file_path="/tmp/big-manual.md")
        )
        for i in range(0, len(content), 64 * 1024):
            yield rag_pb2.UploadDocumentRequest(content=content[i : i + 64 * 1024])

    reply = await rag.stub.UploadDocument(parts())
    assert not reply.unchanged
    assert reply.document.size_bytes == len(content)
    total = reply.document.chunk_count
    assert total > 64
    events = await rag.events(reply.document.name, wait_for="document.indexed", timeout=600)
    types = [t for t, _ in events]
    assert types[0] == "document.uploaded" and types[-1] == "document.indexed"
    progress = [d for t, d in events if t == "document.progress"]
    assert progress, "no progress events for a long document"
    assert all(p["total"] == total and 0 < p["done"] < total for p in progress)
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)

    again = await rag.stub.UploadDocument(parts())
    assert again.unchanged
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=reply.document.name))


def _token(document_id: object) -> str:
    """A page token in the service's format, with whatever inside."""
    raw = json.dumps({"t": "2026-01-01T00:00:00+00:00", "i": document_id}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def _chunk_ids(rag: Rag, doc_id: uuid.UUID) -> set[uuid.UUID]:
    async with rag.store.sessions() as session:
        rows = await session.execute(
            text("SELECT id FROM chunks WHERE document_id = :d"), {"d": doc_id}
        )
        return {r[0] for r in rows}


# Bad input ---------------------------------------------------------------------------------

GOOD_MD = b"# Stable\n\nThis document must survive every failed update untouched.\n"
STABLE_PATH = "/tmp/stable-doc.md"


def _ingest(content: bytes, **source: Any) -> rag_pb2.IngestDocumentRequest:
    return rag_pb2.IngestDocumentRequest(source=rag_pb2.DocumentSource(**source), content=content)


BAD_INGESTS: list[tuple[str, rag_pb2.IngestDocumentRequest, str]] = [
    ("empty", _ingest(b"", file_path="/tmp/empty.md"), "empty"),
    ("whitespace", _ingest(b"  \n\n ", file_path="/tmp/blank.txt"), "no text"),
    ("undecodable", _ingest(b"caf\xe9 au lait", file_path="/tmp/latin1.txt"), "not UTF-8"),
    ("nul bytes", _ingest(b"abc\x00def", file_path="/tmp/nul.txt"), "NUL"),
    ("corrupt pdf", _ingest(b"%PDF-1.4\n1 0 obj <<", file_path="/tmp/bad.pdf"), "corrupt PDF"),
    ("pdf type, not pdf", _ingest(b"hello", title="x", type=rag_pb2.DOCUMENT_TYPE_PDF), "PDF"),
    ("image", _ingest(b"\x89PNG\r\n\x1a\n....", file_path="/tmp/cat.png"), "unsupported"),
    ("office", _ingest(b"PK\x03\x04....", file_path="/tmp/report.docx"), "unsupported"),
    ("unknown enum", _ingest(b"text", title="t", type=42), "DocumentType"),
    ("too big", _ingest(b"a " * (INLINE_LIMIT // 2 + 1), file_path="/tmp/big.txt"), "bytes"),
    ("no identity", _ingest(b"some text"), "file_path, a source_uri or a title"),
    ("control char", _ingest(b"text", file_path="/tmp/a\x07b.txt"), "control character"),
    ("changed to corrupt", _ingest(b"%PDF-1.5 broken", file_path=STABLE_PATH,
                                   type=rag_pb2.DOCUMENT_TYPE_PDF), "corrupt PDF"),
    ("changed to binary", _ingest(b"\xc3\x28 binary", file_path=STABLE_PATH,
                                  type=rag_pb2.DOCUMENT_TYPE_MARKDOWN), "not UTF-8"),
]  # fmt: skip

BAD_SEARCHES: list[tuple[str, rag_pb2.SearchRequest, str]] = [
    ("top_k too big", rag_pb2.SearchRequest(query="q", top_k=101), "top_k"),
    ("top_k negative", rag_pb2.SearchRequest(query="q", top_k=-1), "top_k"),
    ("empty query", rag_pb2.SearchRequest(query="  "), "query"),
    ("min_score", rag_pb2.SearchRequest(query="q", min_score=1.5), "min_score"),
    ("mode", rag_pb2.SearchRequest(query="q", mode=9), "SearchMode"),  # type: ignore[arg-type]
    ("document name", rag_pb2.SearchRequest(query="q", documents=["notes.md"]), "document name"),
    ("type filter", rag_pb2.SearchRequest(query="q", types=[77]), "DocumentType"),  # type: ignore[list-item]
]


@pytest.fixture
async def stable(rag: Rag) -> AsyncIterator[str]:
    reply = await rag.ingest(GOOD_MD, file_path=STABLE_PATH)
    yield reply.document.name


@pytest.mark.parametrize(
    ("case", "request_", "reason"), BAD_INGESTS, ids=[c[0] for c in BAD_INGESTS]
)
async def test_bad_ingest_is_invalid_argument_and_writes_nothing(
    rag: Rag, stable: str, case: str, request_: rag_pb2.IngestDocumentRequest, reason: str
) -> None:
    before = await rag.snapshot()
    calls = rag.model.calls
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.IngestDocument(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert reason in (err.value.details() or ""), err.value.details()
    assert await rag.snapshot() == before
    assert rag.model.calls == calls


@pytest.mark.parametrize(
    ("case", "request_", "reason"), BAD_SEARCHES, ids=[c[0] for c in BAD_SEARCHES]
)
async def test_bad_search_is_invalid_argument(
    rag: Rag, case: str, request_: rag_pb2.SearchRequest, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.Search(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (err.value.details() or "")


async def test_bad_names_tokens_and_uploads_are_invalid_argument(rag: Rag, stable: str) -> None:
    before = await rag.snapshot()

    async def only_content() -> AsyncIterator[rag_pb2.UploadDocumentRequest]:
        yield rag_pb2.UploadDocumentRequest(content=b"no header first")

    async def too_big() -> AsyncIterator[rag_pb2.UploadDocumentRequest]:
        yield rag_pb2.UploadDocumentRequest(source=rag_pb2.DocumentSource(file_path=STABLE_PATH))
        for _ in range(UPLOAD_LIMIT // (256 * 1024) + 2):
            yield rag_pb2.UploadDocumentRequest(content=b"z " * (128 * 1024))

    async def no_source() -> AsyncIterator[rag_pb2.UploadDocumentRequest]:
        return
        yield  # pragma: no cover

    calls: list[tuple[Any, str]] = [
        (rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name="notes.md")), "document name"),
        (rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name="documents/123")), "document name"),
        (rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name="documents/")), "document"),
        (rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(page_token="garbage!")), "page_token"),
        (rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(page_size=-5)), "page_size"),
        (rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(page_token=_token(5))), "page_token"),
        (
            rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(metadata_filter={"k": "a\x00"})),
            "NUL",
        ),
        (
            rag.stub.Search(rag_pb2.SearchRequest(query="q", metadata_filter={"k": "\x00"})),
            "NUL",
        ),
        (rag.stub.UploadDocument(only_content()), "first upload message"),
        (rag.stub.UploadDocument(too_big()), "size limit"),
        (rag.stub.UploadDocument(no_source()), "no source"),
    ]
    for call, reason in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert reason in (err.value.details() or ""), err.value.details()
    assert await rag.snapshot() == before


async def outbox_emptied(rag: Rag, timeout: float = 60.0) -> None:
    """Until every event the rag service queued (`rag_event_outbox`) has been published."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with rag.store.sessions() as session:
            left = await session.scalar(text("SELECT count(*) FROM rag_event_outbox"))
        if not left:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{left} events still queued"
        await asyncio.sleep(0.2)


async def test_an_event_log_outage_delays_a_documents_events_and_never_invents_one(
    rag: Rag, infra: Any
) -> None:
    """QA, session 21: NATS that took an event but did not acknowledge it in time (SIGSTOPped)
    failed the delete and rolled it back, and the `document.deleted` was stored anyway once NATS
    answered. Now the change is made, its event waits in the outbox, and the log ends with the
    events of what happened, each once, in order: none for what did not."""
    if infra.nats is None:
        pytest.skip("NATS_URL points at an external server")
    kept = await rag.ingest(b"# Kept\n\nA page about herons.\n", file_path="/tmp/kept.md")
    gone = await rag.ingest(b"# Gone\n\nA page about egrets.\n", file_path="/tmp/gone.md")
    pid = infra.nats.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # connected, and answering nothing
    try:
        new = await rag.ingest(
            b"# New\n\nWritten while NATS is frozen.\n", file_path="/tmp/new.md", wait=False
        )
        await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=gone.document.name))
    finally:
        os.kill(pid, signal.SIGCONT)
    await outbox_emptied(rag)
    assert await rag.indexed(new.document.name) == "ready"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await rag.stub.GetDocument(rag_pb2.GetDocumentRequest(name=gone.document.name))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    await outbox_emptied(rag)
    told = {
        doc.document.name: [t for t, _ in await rag.events(doc.document.name)]
        for doc in (kept, gone, new)
    }
    assert told[kept.document.name] == ["document.uploaded", "document.indexed"]
    assert told[gone.document.name] == [
        "document.uploaded",
        "document.indexed",
        "document.deleted",
    ]
    assert told[new.document.name] == ["document.uploaded", "document.indexed"]

    # NATS stopped outright: the upload is answered at once, its events follow NATS back —
    # its indexing's progress too, after its `document.uploaded` (QA: the progress, published
    # directly then, came first).
    paragraphs = "\n\n".join(f"Paragraph {i} about the later herons. " * 8 for i in range(160))
    infra.nats.stop()
    try:
        later = await rag.ingest(
            f"# Later\n\n{paragraphs}\n".encode(), file_path="/tmp/later.md", wait=False
        )
        assert await rag.indexed(later.document.name) == "ready"
    finally:
        infra.nats.start()
    await outbox_emptied(rag)
    events = await rag.events(later.document.name, wait_for="document.indexed")
    kinds = [t for t, _ in events]
    assert kinds[0] == "document.uploaded" and kinds[-1] == "document.indexed", kinds
    progress = [d["done"] for t, d in events if t == "document.progress"]
    assert progress and progress == sorted(progress) and len(kinds) == len(progress) + 2
    for doc in (kept, new, later):
        await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=doc.document.name))


async def test_model_of_the_wrong_dimension_stops_the_service(rag: Rag) -> None:
    settings = rag.settings.model_copy(update={"EMBEDDING_DIMENSION": 768})
    embedder = LocalEmbedder.from_model(rag.model, settings)
    with pytest.raises(StartupError, match=r"384-dimension vectors but EMBEDDING_DIMENSION is 768"):
        await build_service(settings, embedder=embedder)
