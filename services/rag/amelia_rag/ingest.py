"""Ingest: validate → parse and chunk (worker thread) → store, then embed in the background.

An upload is answered as soon as the document and its chunks are stored (`indexing`): the
embeddings, the slow part, are computed afterwards by the indexer (indexer.py) of whichever rag
process claims the document. Bad content is still refused before anything is stored.

Idempotent by content: the same bytes indexed with the same model and chunking are not parsed
or embedded again (only title/source/metadata are refreshed); the same bytes of a document whose
indexing `failed` send it back to indexing with the embeddings already saved kept (resume, not
redo). Changed content replaces the old chunks in one transaction. Whether an ingest updates
the stored document of its identity or makes a new one is decided by the store in the storing
transaction, on that row locked: a document deleted while this one was parsed is not brought
back (a new document, `replaces_previous` false). An upload named by its title only (a
browser's: no path) whose title and bytes a stored document already holds — a file `amelia
ingest` stored — is a re-ingest of that document, not a second one; the other way round, an
ingest of a file whose title and bytes a document uploaded by its title only holds adopts that
document, which takes the file's path (store `_locked_document`).
Events, all with subject `documents/{id}`:

- `document.uploaded` when the document is stored (title, type, size, hash, chunk count),
  written into the event outbox in the storing transaction and published after its commit
  (`store.Tell`): an event exactly when the change is made, published once NATS answers;
- `document.progress` while its chunks are embedded (`done`/`total` chunks), with each batch;
- `document.indexed` when it is searchable, or `document.failed` (with `error`) when indexing
  was given up.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amelia.v1 import events_pb2
from amelia_common.logging import get_logger
from amelia_common.settings import Settings
from amelia_rag.chunking import PASSAGE_VERSION, Chunk, child_size, chunk_document
from amelia_rag.embeddings import Embedder
from amelia_rag.models import DocumentRow, change_event, document_event
from amelia_rag.parsing import (
    PARSER_VERSION,
    TYPES,
    InvalidDocumentError,
    ParsedDocument,
    detect_type,
    name_of,
    parse,
)
from amelia_rag.store import DocumentFields, DocumentStore

log = get_logger("amelia.rag.ingest")

MAX_NAME_CHARS = 4096
MAX_METADATA_BYTES = 64 * 1024


@dataclass
class Source:
    """What the client says about a document (the proto's DocumentSource, validated)."""

    title: str = ""
    type: str = ""  # '' = detect
    source_uri: str = ""
    file_path: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        """Same file path (else URI, else title) = same document."""
        if self.file_path:
            return f"file:{self.file_path}"
        if self.source_uri:
            return f"uri:{self.source_uri}"
        return f"title:{self.title}"


@dataclass
class IngestResult:
    document: DocumentRow
    unchanged: bool


def validate_source(source: Source) -> None:
    """Names must be storable text; a document needs something to be identified by."""
    for label, value in (
        ("title", source.title),
        ("file_path", source.file_path),
        ("source_uri", source.source_uri),
    ):
        if len(value) > MAX_NAME_CHARS:
            raise InvalidDocumentError(f"{label} is longer than {MAX_NAME_CHARS} characters")
        bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs")), None)
        if bad is not None:
            raise InvalidDocumentError(
                f"{label} {value[:80]!r} contains the control character U+{ord(bad):04X}"
            )
    if not (source.file_path or source.source_uri or source.title.strip()):
        raise InvalidDocumentError("a document needs a file_path, a source_uri or a title")
    if source.type and source.type not in TYPES:
        raise InvalidDocumentError(f"unknown document type {source.type!r}")
    validate_metadata(source.metadata)


def validate_metadata(metadata: dict[str, Any]) -> None:
    import json

    def check(value: Any, where: str) -> None:
        if isinstance(value, str) and "\x00" in value:
            raise InvalidDocumentError(f"metadata {where} contains a NUL character")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidDocumentError(f"metadata {where} is not a finite number")
        if isinstance(value, dict):
            for k, v in value.items():
                if not k or "\x00" in k:
                    raise InvalidDocumentError(f"metadata key {k!r} in {where} is not a valid key")
                check(v, f"{where}.{k}" if where else k)
        if isinstance(value, list):
            for i, v in enumerate(value):
                check(v, f"{where}[{i}]")

    check(metadata, "")
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidDocumentError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")


def resolve_type(source: Source, content: bytes) -> str:
    if source.type:
        return source.type
    web = source.source_uri.startswith(("http://", "https://")) and not source.file_path
    return detect_type(name_of(source.file_path, source.source_uri, source.title), content, web=web)


@dataclass
class Prepared:
    """A parsed document cut into chunks, with the passage each chunk returns."""

    type: str
    title: str
    parsed: ParsedDocument
    chunks: list[Chunk]
    # The passage text of each chunk, None when it is the chunk itself.
    passages: list[str | None]


def prepare(source: Source, content: bytes, chunk_size: int, chunk_overlap: int) -> Prepared:
    """CPU work, run in a thread: type, parse, chunk, passages."""
    doc_type = resolve_type(source, content)
    name = name_of(source.file_path, source.source_uri, source.title)
    parsed = parse(content, doc_type, name)
    size, overlap = child_size(chunk_size, chunk_overlap)
    chunks = chunk_document(parsed, size, overlap, passage_size=chunk_size)
    if not chunks:
        raise InvalidDocumentError("document has no text to index")
    title = source.title.strip() or name_of(source.file_path, "", "") or parsed.title or name
    passages = [
        None
        if (c.passage_start, c.passage_end) == (c.start, c.end)
        else parsed.text[c.passage_start : c.passage_end]
        for c in chunks
    ]
    return Prepared(doc_type, title, parsed, chunks, passages)


class Ingestor:
    """Turns validated bytes into a stored, searchable document."""

    def __init__(
        self,
        settings: Settings,
        store: DocumentStore,
        embedder: Embedder,
        stored: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        # Told when a document waits for its embeddings (wakes the indexer up).
        self.stored = stored

    @property
    def index_signature(self) -> str:
        s = self.settings
        size, overlap = child_size(s.CHUNK_SIZE, s.CHUNK_OVERLAP)
        return (
            f"{self.embedder.signature}|chunks={size}/{overlap}"
            f"|passages={s.CHUNK_SIZE}/v{PASSAGE_VERSION}"
            f"|parser={PARSER_VERSION}"
        )

    async def ingest(self, source: Source, content: bytes) -> IngestResult:
        started = time.perf_counter()
        validate_source(source)
        if not content:
            raise InvalidDocumentError("document is empty (0 bytes)")
        if len(content) > self.settings.MAX_DOCUMENT_BYTES:
            raise InvalidDocumentError(
                f"document is {len(content)} bytes; the limit is "
                f"{self.settings.MAX_DOCUMENT_BYTES} bytes (MAX_DOCUMENT_BYTES)"
            )
        content_hash = hashlib.sha256(content).hexdigest()
        signature = self.index_signature
        fields = DocumentFields(
            identity=source.identity,
            title=source.title,
            type=source.type,
            source_uri=source.source_uri,
            file_path=source.file_path,
            size_bytes=len(content),
            content_hash=content_hash,
            index_signature=signature,
            meta=source.metadata,
            upload_title=source.title.strip() or name_of(source.file_path, source.source_uri, ""),
        )

        def uploaded(row: DocumentRow, replaces_previous: bool) -> events_pb2.Event:
            return change_event(
                "document.uploaded",
                row.id,
                document_event(
                    row,
                    file_path=row.file_path,
                    source_uri=row.source_uri,
                    size_bytes=row.size_bytes,
                    chunks=row.chunk_count,
                    replaces_previous=replaces_previous,
                ),
            )

        # A hint only, read without a lock: whether the stored document may already hold these
        # bytes (then they need not be parsed). What is done is decided by the store on the row
        # locked, as it is then: a delete or another ingest may have come in between.
        hint = await self.store.find_for(fields)
        if (
            hint is not None
            and hint.content_hash == content_hash
            and hint.index_signature == signature
        ):
            refreshed = await self.store.refresh(fields, uploaded)
            if refreshed is not None:
                if refreshed.resumed:
                    self.stored()
                    log.info("failed document resumed", document=str(refreshed.document.id))
                return IngestResult(refreshed.document, refreshed.unchanged)

        prepared = await asyncio.to_thread(
            prepare, source, content, self.settings.CHUNK_SIZE, self.settings.CHUNK_OVERLAP
        )
        fields.type, fields.title = prepared.type, prepared.title
        result = await self.store.replace(fields, prepared.chunks, prepared.passages, uploaded)
        if not result.unchanged:
            self.stored()
        log.info(
            "document stored, indexing" if not result.unchanged else "document unchanged",
            document=str(result.document.id),
            chunks=result.document.chunk_count,
            replaced=result.replaced,
            seconds=round(time.perf_counter() - started, 3),
        )
        return IngestResult(result.document, result.unchanged)

    async def delete(self, document_id: uuid.UUID) -> DocumentRow | None:
        def deleted(row: DocumentRow) -> events_pb2.Event:
            return change_event("document.deleted", row.id, {"title": row.title})

        return await self.store.delete(document_id, deleted)
