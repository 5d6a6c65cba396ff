"""Documents and chunks in PostgreSQL: idempotent replace in one transaction, get, list, delete,
and the indexer's side: claim a document, save embeddings, finish or fail it.

Every write that changes a document writes the event telling of it (`Tell`) into the event
outbox in the same transaction (`amelia_common.eventlog.outbox`): a change rolled back leaves no
event, and the event of one committed is published after the commit — at once, or once NATS is
back. Concurrent ingests of the same document serialize on an advisory lock keyed by its
identity, and decide "replace the stored document or make a new one" on its row locked
(`FOR UPDATE`), which a delete locks too: whichever of an ingest and a delete commits second
sees what the first did (a document deleted is never brought back under its name). An upload
named by its title only (a browser's, no path) whose title and bytes a stored document holds
is a re-ingest of that document, and an ingest of a file (a path or URI) whose title and bytes
a document uploaded by its title only holds adopts that document (`_locked_document`). An
ingest stores the chunks without embeddings and the document `indexing`; a rag process then
claims it with a lease (`FOR UPDATE SKIP LOCKED`, so one replica takes each document), fills in
the embeddings batch by batch while renewing the lease, and marks it `ready`. Every indexer
write checks the lease is still its own: a document changed, deleted or taken over meanwhile is
left to whoever owns it now.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Select, delete, func, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from amelia.v1 import events_pb2
from amelia_common import paging
from amelia_common.db import transaction
from amelia_common.errors import InvalidArgumentError
from amelia_common.eventlog.outbox import Outbox
from amelia_rag.chunking import Chunk
from amelia_rag.models import ChunkRow, DocumentRow

# The event telling of a change, made from the row as the change left it.
Tell = Callable[[DocumentRow], events_pb2.Event]
# An ingest's `document.uploaded`, told whether it replaced a stored document's content
# (decided in the storing transaction, on the row locked).
Uploaded = Callable[[DocumentRow, bool], events_pb2.Event]

_INSERT_CHUNK = text(
    """
    INSERT INTO chunks (id, document_id, chunk_index, content, start_offset, end_offset,
                        heading_path, page, metadata, embedding, tsv, section,
                        passage_start, passage_end, passage)
    VALUES (:id, :document_id, :chunk_index, :content, :start_offset, :end_offset,
            :heading_path, :page, CAST(:metadata AS jsonb), NULL,
            setweight(to_tsvector('english', :headings), 'A')
              || to_tsvector('english', :content),
            :section, :passage_start, :passage_end, :passage)
    """
)
# The vectors travel as one flat float4[] (binary, exact), row n being elements
# (n-1)*dim+1 .. n*dim: formatting and parsing pgvector's text form cost about a millisecond
# per 384-d vector on each side, a few percent of embedding's own time.
_SAVE_VECTORS = text(
    """
    UPDATE chunks SET embedding = v.embedding
    FROM (SELECT ids.id,
                 (CAST(:flat AS real[]))[(ids.n - 1) * :dim + 1 : ids.n * :dim]::vector
                   AS embedding
          FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS ids(id, n)) AS v
    WHERE chunks.id = v.id AND chunks.document_id = :document_id
    """
)

_OTHER_MODELS = text(
    """
    UPDATE documents
    SET index_signature = :embedder || substr(index_signature, strpos(index_signature, '|')),
        state = 'indexing', index_error = '', lease_owner = NULL, lease_until = NULL,
        index_attempts = 0
    WHERE index_signature LIKE '%|chunks=%'
      AND right(split_part(index_signature, '|', 1), length(:model)) <> :model
    RETURNING id
    """
)


@dataclass
class DocumentFields:
    """What an ingest writes on the document row."""

    identity: str
    title: str
    type: str
    source_uri: str
    file_path: str
    size_bytes: int
    content_hash: str
    index_signature: str
    meta: dict[str, Any]
    # The title a browser's upload of this file carries: the title sent, else the file name of
    # the path (or URI). Fixed before parsing, so the unlocked hint and the locked decision
    # look for the same document (`title` becomes the parsed document's after parsing).
    upload_title: str

    @property
    def named_by_title_only(self) -> bool:
        """No file path, no URI: a browser's upload, which cannot say where the file is."""
        return not (self.file_path or self.source_uri)


@dataclass
class ReplaceResult:
    document: DocumentRow
    unchanged: bool
    # Whether a stored document of this identity was updated (else this one is new).
    replaced: bool
    # A `failed` document's same content: sent back to indexing with its embeddings kept.
    resumed: bool = False


@dataclass(frozen=True)
class PendingChunk:
    """A stored chunk whose embedding the indexer has still to compute."""

    id: uuid.UUID
    content: str
    heading_path: tuple[str, ...]
    page: int


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as ListChunks shows it (no vectors)."""

    chunk_index: int
    content: str
    start_offset: int
    end_offset: int
    heading_path: list[str]
    page: int
    embedded: bool


def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form, `[0.1,0.2,…]`."""
    return "[" + ",".join(f"{x:.7g}" for x in vector.tolist()) + "]"


def _now() -> datetime:
    return datetime.now(UTC)


class DocumentStore:
    """The rag tables, through one session factory."""

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Outbox | None = None,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        # Where the writes' events go (None: a store that only reads, as tests' snapshots).
        self.outbox = outbox

    async def _tell(self, session: AsyncSession, tell: Tell, row: DocumentRow) -> None:
        """The change's event, into the outbox in the change's transaction."""
        if self.outbox is None:
            raise RuntimeError("this DocumentStore has no event outbox: it cannot write")
        await self.outbox.add(session, tell(row))

    async def _delivered(self, row: DocumentRow) -> DocumentRow:
        """After the commit: the outbox's events published (or left to its loop)."""
        if self.outbox is not None:
            await self.outbox.deliver()
        return row

    async def vector_dimension(self) -> int:
        """The dimension of `chunks.embedding` as the table was created."""
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT atttypmod FROM pg_attribute "
                    "WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'"
                )
            )
            return int(result.scalar_one())

    async def find(self, identity: str) -> DocumentRow | None:
        async with self.sessions() as session:
            result = await session.execute(
                select(DocumentRow).where(DocumentRow.identity == identity)
            )
            return result.scalar_one_or_none()

    async def find_for(self, fields: DocumentFields) -> DocumentRow | None:
        """The stored document an ingest of `fields` is about, read without a lock (a hint:
        `refresh` and `replace` decide on it again, locked): the one of its identity, else the
        one holding the same title and bytes that `_locked_document` would take."""
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(DocumentRow).where(DocumentRow.identity == fields.identity)
                )
            ).scalar_one_or_none()
            if row is None:
                row = (await session.execute(_same_title_and_bytes(fields))).scalar_one_or_none()
            return row

    async def get(self, document_id: uuid.UUID) -> DocumentRow | None:
        async with self.sessions() as session:
            return await session.get(DocumentRow, document_id)

    async def refresh(self, fields: DocumentFields, tell: Uploaded) -> ReplaceResult | None:
        """The same content ingested again, decided on the stored row locked (as `replace`):

        - indexed or indexing: keep the chunks, refresh title, source and metadata if they
          moved (the request's replace them: metadata left out clears it; a title left out
          keeps the stored one), and the path of a document this ingest adopts. `unchanged`
          only when none did, so the reply does not say `unchanged` of a document whose
          metadata it cleared;
        - `failed`: back to `indexing` with its chunks and the embeddings already computed
          kept, so indexing resumes rather than restarts (`document.uploaded`, replacing).

        None when no document of this identity holds this content any more (deleted or
        changed since the caller looked): the caller stores it as `replace` decides then.
        """
        async with transaction(self.sessions) as session:
            row, fields = await _locked_document(session, fields)
            if row is None or not _same_content(row, fields):
                return None
            moved = _refreshed(row, fields)
            if row.state != "failed":
                return ReplaceResult(row, unchanged=not moved, replaced=True)
            row.state, row.index_error = "indexing", ""
            row.lease_owner, row.lease_until, row.index_attempts = None, None, 0
            await session.flush()
            await self._tell(session, lambda r: tell(r, True), row)
        return ReplaceResult(
            await self._delivered(row), unchanged=False, replaced=True, resumed=True
        )

    async def replace(
        self,
        fields: DocumentFields,
        chunks: Sequence[Chunk],
        passages: Sequence[str | None],
        tell: Uploaded,
    ) -> ReplaceResult:
        """Write the document (`indexing`) and its new chunks, not yet embedded, atomically.

        Whether this replaces a stored document or makes a new one is decided here, on the row
        of this identity locked, never on what the caller read before parsing: a document
        deleted meanwhile (its delete committed first) is not brought back, this content is a
        new document with a new id (`replaces_previous` false); one another ingest created
        meanwhile is replaced (true). The old chunks go in the same transaction.
        `passages[i]` is the passage text of chunk i (None when it is the chunk itself). If
        another ingest stored the same content meanwhile, nothing is written and the result
        is `unchanged`; a document this ingest adopts holding it is refreshed as by `refresh`.
        """
        async with transaction(self.sessions) as session:
            row, fields = await _locked_document(session, fields)
            replaced = row is not None
            if row is not None and row.state != "failed" and _same_content(row, fields):
                if row.identity == fields.identity:
                    return ReplaceResult(row, unchanged=True, replaced=True)
                return ReplaceResult(row, unchanged=not _refreshed(row, fields), replaced=True)
            now = _now()
            if row is None:
                row = DocumentRow(id=uuid.uuid4(), identity=fields.identity, create_time=now)
                session.add(row)
            else:
                await session.execute(delete(ChunkRow).where(ChunkRow.document_id == row.id))
            row.identity = fields.identity
            row.title = fields.title
            row.type = fields.type
            row.source_uri = fields.source_uri
            row.file_path = fields.file_path
            row.size_bytes = fields.size_bytes
            row.content_hash = fields.content_hash
            row.index_signature = fields.index_signature
            row.meta = fields.meta
            row.chunk_count = len(chunks)
            row.update_time = now
            row.state = "indexing"
            row.index_error = ""
            row.lease_owner = None
            row.lease_until = None
            row.index_attempts = 0
            await session.flush()
            if chunks:
                await session.execute(
                    _INSERT_CHUNK,
                    [
                        {
                            "id": uuid.uuid4(),
                            "document_id": row.id,
                            "chunk_index": chunk.index,
                            "content": chunk.text,
                            "start_offset": chunk.start,
                            "end_offset": chunk.end,
                            "heading_path": list(chunk.heading_path),
                            "page": chunk.page,
                            "metadata": json.dumps(chunk.meta),
                            "headings": " ".join(chunk.heading_path),
                            "section": chunk.section,
                            "passage_start": chunk.passage_start if passage is not None else None,
                            "passage_end": chunk.passage_end if passage is not None else None,
                            "passage": passage,
                        }
                        for chunk, passage in zip(chunks, passages, strict=True)
                    ],
                )
            await self._tell(session, lambda r: tell(r, replaced), row)
        return ReplaceResult(await self._delivered(row), unchanged=False, replaced=replaced)

    async def embedded_counts(self, rows: Sequence[DocumentRow]) -> dict[uuid.UUID, int]:
        """How many chunks of each document have their embedding (all of a `ready` one)."""
        counts = {r.id: r.chunk_count for r in rows if r.state == "ready"}
        others = [r.id for r in rows if r.state != "ready"]
        if others:
            async with self.sessions() as session:
                result = await session.execute(
                    select(ChunkRow.document_id, func.count())
                    .where(ChunkRow.document_id.in_(others), ChunkRow.embedding.is_not(None))
                    .group_by(ChunkRow.document_id)
                )
                counts.update({document_id: int(n) for document_id, n in result.all()})
        return {r.id: counts.get(r.id, 0) for r in rows}

    async def reembed_other_models(self, embedder_signature: str, model: str) -> int:
        """Send documents embedded by another model back to `indexing`, their vectors dropped.

        Vectors of two models are not comparable: after a change of EMBEDDING_MODEL a search
        would rank the old documents by noise. `model` is how every embedder signature ends,
        `:<model>:<dimension>`; the same model served another way (another provider or URL) is
        left alone. The chunks stay (chunking is the next ingest's business), found by their
        words until the indexer has embedded them again. Only signatures this service wrote
        (`<embedder>|chunks=…`) are looked at. Returns how many documents were sent back.
        """
        params = {"embedder": embedder_signature, "model": model}
        async with transaction(self.sessions) as session:
            result = await session.execute(_OTHER_MODELS, params)
            ids = [r.id for r in result]
            if ids:
                await session.execute(
                    text("UPDATE chunks SET embedding = NULL WHERE document_id = ANY(:ids)"),
                    {"ids": ids},
                )
            return len(ids)

    # The indexer's side ----------------------------------------------------------------

    async def claim(self, owner: str, lease_seconds: float) -> DocumentRow | None:
        """Take the oldest `indexing` document nobody holds (or whose holder's lease ran out)."""
        async with transaction(self.sessions) as session:
            result = await session.execute(
                select(DocumentRow)
                .where(
                    DocumentRow.state == "indexing",
                    (DocumentRow.lease_until.is_(None)) | (DocumentRow.lease_until < func.now()),
                )
                .order_by(DocumentRow.update_time, DocumentRow.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            row = result.scalar_one_or_none()
            if row is None:
                return None
            row.lease_owner = owner
            row.lease_until = await _lease_end(session, lease_seconds)
            row.index_attempts += 1
            return row

    async def pending(self, document_id: uuid.UUID, limit: int) -> list[PendingChunk]:
        """Up to `limit` chunks of the document not embedded yet, in document order."""
        async with self.sessions() as session:
            result = await session.execute(
                select(ChunkRow.id, ChunkRow.content, ChunkRow.heading_path, ChunkRow.page)
                .where(ChunkRow.document_id == document_id, ChunkRow.embedding.is_(None))
                .order_by(ChunkRow.chunk_index)
                .limit(limit)
            )
            return [
                PendingChunk(r.id, r.content, tuple(r.heading_path or ()), r.page) for r in result
            ]

    async def count_pending(self, document_id: uuid.UUID) -> int:
        async with self.sessions() as session:
            result = await session.execute(
                select(func.count())
                .select_from(ChunkRow)
                .where(ChunkRow.document_id == document_id, ChunkRow.embedding.is_(None))
            )
            return int(result.scalar_one())

    async def _held(
        self, session: AsyncSession, document_id: uuid.UUID, owner: str, content_hash: str
    ) -> DocumentRow | None:
        """The document, locked, if `owner` still holds it for this content; else None."""
        result = await session.execute(
            select(DocumentRow)
            .where(
                DocumentRow.id == document_id,
                DocumentRow.state == "indexing",
                DocumentRow.lease_owner == owner,
                DocumentRow.content_hash == content_hash,
            )
            .with_for_update()
        )
        return result.scalar_one_or_none()

    async def save_vectors(
        self,
        document_id: uuid.UUID,
        owner: str,
        content_hash: str,
        chunk_ids: Sequence[uuid.UUID],
        vectors: np.ndarray,
        lease_seconds: float,
        tell: Tell | None = None,
    ) -> bool:
        """Store embeddings and renew the lease; False when the document is no longer ours.
        `tell`: the progress event, queued with the batch (the outbox delivers it, in order
        after the document's `document.uploaded`, without this call waiting for it)."""
        async with transaction(self.sessions) as session:
            row = await self._held(session, document_id, owner, content_hash)
            if row is None:
                return False
            await session.execute(
                _SAVE_VECTORS,
                {
                    "ids": list(chunk_ids),
                    "flat": np.asarray(vectors, dtype=np.float32).ravel().tolist(),
                    "dim": int(vectors.shape[1]),
                    "document_id": document_id,
                },
            )
            row.lease_until = await _lease_end(session, lease_seconds)
            # Progress: the interruptions before this one no longer count against the document
            # (only this claim does), so a slow document interrupted now and then is not given up.
            row.index_attempts = 1
            if tell is not None:
                await self._tell(session, tell, row)
        if tell is not None and self.outbox is not None:
            self.outbox.kick()
        return True

    async def renew(
        self, document_id: uuid.UUID, owner: str, content_hash: str, lease_seconds: float
    ) -> bool:
        """Extend the lease; False when the document is no longer ours."""
        return await self._lease(document_id, owner, content_hash, lease_seconds, keep=True)

    async def finish(
        self, document_id: uuid.UUID, owner: str, content_hash: str, tell: Tell
    ) -> DocumentRow | None:
        """Every chunk embedded: the document is `ready` (None if it is no longer ours)."""
        async with transaction(self.sessions) as session:
            row = await self._held(session, document_id, owner, content_hash)
            if row is None:
                return None
            left = await session.execute(
                select(func.count())
                .select_from(ChunkRow)
                .where(ChunkRow.document_id == document_id, ChunkRow.embedding.is_(None))
            )
            if left.scalar_one():
                return None
            row.state, row.lease_owner, row.lease_until = "ready", None, None
            await session.flush()
            await self._tell(session, tell, row)
        return await self._delivered(row)

    async def fail(
        self,
        document_id: uuid.UUID,
        owner: str | None,
        content_hash: str,
        error: str,
        tell: Tell,
    ) -> DocumentRow | None:
        """Give up on indexing: `failed` with the reason (kept until the next ingest)."""
        async with transaction(self.sessions) as session:
            query = select(DocumentRow).where(
                DocumentRow.id == document_id,
                DocumentRow.state == "indexing",
                DocumentRow.content_hash == content_hash,
            )
            if owner is not None:
                query = query.where(DocumentRow.lease_owner == owner)
            row = (await session.execute(query.with_for_update())).scalar_one_or_none()
            if row is None:
                return None
            row.state, row.index_error = "failed", error[:2000]
            row.lease_owner, row.lease_until = None, None
            await session.flush()
            await self._tell(session, tell, row)
        return await self._delivered(row)

    async def release(
        self, document_id: uuid.UUID, owner: str, content_hash: str, retry_seconds: float
    ) -> None:
        """Let go of a document after a passing failure: anyone may retry it after a while."""
        await self._lease(document_id, owner, content_hash, retry_seconds, keep=False)

    async def _lease(
        self, document_id: uuid.UUID, owner: str, content_hash: str, seconds: float, *, keep: bool
    ) -> bool:
        """Move a held document's lease end `seconds` ahead, still ours if `keep`, else nobody's
        (anyone may take it then); False when the document is no longer ours."""
        async with transaction(self.sessions) as session:
            row = await self._held(session, document_id, owner, content_hash)
            if row is None:
                return False
            if not keep:
                row.lease_owner = None
            row.lease_until = await _lease_end(session, seconds)
            return True

    async def delete(self, document_id: uuid.UUID, tell: Tell) -> DocumentRow | None:
        """Delete a document (its chunks cascade); None when it does not exist."""
        async with transaction(self.sessions) as session:
            row = await session.get(DocumentRow, document_id, with_for_update=True)
            if row is None:
                return None
            await session.delete(row)
            await session.flush()
            await self._tell(session, tell, row)
        return await self._delivered(row)

    async def list(
        self,
        *,
        page_size: int,
        page_token: str,
        types: Sequence[str],
        metadata: dict[str, str],
        scope: str = "",
    ) -> tuple[list[DocumentRow], str]:
        """One page in creation order, and the token of the next page ('' at the end), bound
        to the request's `scope` (`paging.request_scope`)."""
        query = select(DocumentRow)
        if page_token:
            created, last_id = _keyset(page_token, scope)
            query = query.where(
                tuple_(DocumentRow.create_time, DocumentRow.id) > tuple_(created, last_id)
            )
        if types:
            query = query.where(DocumentRow.type.in_(list(types)))
        for key, value in metadata.items():
            query = query.where(DocumentRow.meta.op("->>")(key) == value)
        query = query.order_by(DocumentRow.create_time, DocumentRow.id).limit(page_size + 1)
        async with self.sessions() as session:
            rows = list((await session.execute(query)).scalars())
        if len(rows) <= page_size:
            return rows, ""
        rows = rows[:page_size]
        return rows, paging.encode_keyset(rows[-1].create_time, str(rows[-1].id), scope)

    async def chunks(
        self, document_id: uuid.UUID, *, page_size: int, after: int
    ) -> tuple[Sequence[StoredChunk], bool]:
        """Chunks of a document after chunk index `after`, in document order, and whether more
        follow."""
        query = (
            select(
                ChunkRow.chunk_index,
                ChunkRow.content,
                ChunkRow.start_offset,
                ChunkRow.end_offset,
                ChunkRow.heading_path,
                ChunkRow.page,
                ChunkRow.embedding.is_not(None).label("embedded"),
            )
            .where(ChunkRow.document_id == document_id, ChunkRow.chunk_index > after)
            .order_by(ChunkRow.chunk_index)
            .limit(page_size + 1)
        )
        async with self.sessions() as session:
            rows = [StoredChunk(*r) for r in await session.execute(query)]
        return rows[:page_size], len(rows) > page_size

    async def count_chunks(self, document_id: uuid.UUID | None = None) -> int:
        """Chunks stored (of one document, or in all); used by tests and the bench."""
        query = select(func.count()).select_from(ChunkRow)
        if document_id is not None:
            query = query.where(ChunkRow.document_id == document_id)
        async with self.sessions() as session:
            return int((await session.execute(query)).scalar_one())


async def _locked_document(
    session: AsyncSession, fields: DocumentFields
) -> tuple[DocumentRow | None, DocumentFields]:
    """The stored document this ingest is about, locked, and `fields` as they apply to it.

    The document of the ingest's identity; else the oldest document holding the same title and
    the same bytes (`_same_title_and_bytes`), which this ingest then is a re-ingest of:

    - for an ingest named by its title only (a browser's upload, which has no path to send),
      any such document — a file `amelia ingest` stored, whose title is its file name: its
      identity, file path and source URI stay;
    - for an ingest of a file (a path or URI), only a document named by its title only — the
      same file a browser uploaded first — which it adopts: the document takes this ingest's
      identity, path and URI (a document with a path or URI of its own is never taken).

    The rest follows the usual re-ingest rules (docs/rag.md, "Document identity"). None: a new
    document.

    Locks, always in this order, so no two ingests wait on each other in a cycle: the bytes'
    advisory lock (every ingest storing the same bytes takes it, so a title-only upload that
    stores after an ingest of the file it raced sees the file's document), then the
    identity's (serializes ingests of one name even before its row exists), then the row
    (`FOR UPDATE`, which a delete takes too). A matching document changed or deleted meanwhile
    no longer matches once locked (PostgreSQL re-checks the row), and the upload is new."""
    await _advisory_lock(session, f"amelia.rag.content:{fields.content_hash}")
    await _advisory_lock(session, f"amelia.rag.document:{fields.identity}")
    result = await session.execute(
        select(DocumentRow).where(DocumentRow.identity == fields.identity).with_for_update()
    )
    row = result.scalar_one_or_none()
    if row is not None:
        return row, fields
    same = (
        await session.execute(_same_title_and_bytes(fields).with_for_update())
    ).scalar_one_or_none()
    if same is None or not fields.named_by_title_only:
        return same, fields
    return same, replace(
        fields, identity=same.identity, file_path=same.file_path, source_uri=same.source_uri
    )


async def _advisory_lock(session: AsyncSession, key: str) -> None:
    """A lock on `key` until the transaction ends."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key}
    )


def _same_title_and_bytes(fields: DocumentFields) -> Select[tuple[DocumentRow]]:
    """The oldest document holding these bytes under this ingest's upload title (of another
    identity); for an ingest of a file, only one named by its title only."""
    query = select(DocumentRow).where(
        DocumentRow.content_hash == fields.content_hash,
        DocumentRow.title == fields.upload_title,
        DocumentRow.identity != fields.identity,
    )
    if not fields.named_by_title_only:
        query = query.where(DocumentRow.file_path == "", DocumentRow.source_uri == "")
    return query.order_by(DocumentRow.create_time, DocumentRow.id).limit(1)


def _refreshed(row: DocumentRow, fields: DocumentFields) -> bool:
    """The locked document, holding this ingest's content, named and described as the ingest
    says (a title left out keeps the stored one; the identity and path change only when this
    ingest adopts the document); whether anything moved."""
    named = (
        fields.identity,
        fields.file_path,
        fields.source_uri,
        fields.title.strip() or row.title,
        fields.meta,
    )
    if (row.identity, row.file_path, row.source_uri, row.title, row.meta) == named:
        return False
    row.identity, row.file_path, row.source_uri, row.title, row.meta = named
    return True


def _same_content(row: DocumentRow, fields: DocumentFields) -> bool:
    """The stored document holds these bytes, chunked and embedded the same way."""
    return (row.content_hash, row.index_signature) == (fields.content_hash, fields.index_signature)


async def _lease_end(session: AsyncSession, seconds: float) -> datetime:
    """now() + seconds by the database's clock (every replica reads the same one)."""
    result = await session.execute(
        text("SELECT now() + make_interval(secs => :s)"), {"s": float(seconds)}
    )
    value: datetime = result.scalar_one()
    return value


def _keyset(token: str, scope: str) -> tuple[datetime, uuid.UUID]:
    """The `(create_time, id)` a ListDocuments page token holds."""
    created, last_id = paging.decode_keyset(token, scope)
    try:
        return created, uuid.UUID(last_id)
    except ValueError:
        raise InvalidArgumentError(paging.BAD_TOKEN) from None
