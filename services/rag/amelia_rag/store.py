"""Documents and chunks in PostgreSQL: idempotent replace in one transaction, get, list, delete.

Every write runs in one transaction that also publishes its event before committing (through
the `before_commit` hook), so a failure anywhere (database, event log) leaves the tables as they
were. Concurrent ingests of the same document serialize on an advisory lock keyed by its
identity.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from amelia_common.db import transaction
from amelia_rag.chunking import Chunk
from amelia_rag.models import ChunkRow, DocumentRow

BeforeCommit = Callable[[DocumentRow], Awaitable[None]]

_INSERT_CHUNK = text(
    """
    INSERT INTO chunks (id, document_id, chunk_index, content, start_offset, end_offset,
                        heading_path, page, metadata, embedding, tsv)
    VALUES (:id, :document_id, :chunk_index, :content, :start_offset, :end_offset,
            :heading_path, :page, CAST(:metadata AS jsonb), CAST(:embedding AS vector),
            setweight(to_tsvector('english', :headings), 'A')
              || to_tsvector('english', :content))
    """
)


class InvalidPageToken(ValueError):
    """A page token that this service did not issue."""


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


@dataclass
class ReplaceResult:
    document: DocumentRow
    unchanged: bool


def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form, `[0.1,0.2,…]`."""
    return "[" + ",".join(f"{x:.7g}" for x in vector.tolist()) + "]"


def _now() -> datetime:
    return datetime.now(UTC)


class DocumentStore:
    """The rag tables, through one session factory."""

    def __init__(self, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.engine = engine
        self.sessions = sessions

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

    async def get(self, document_id: uuid.UUID) -> DocumentRow | None:
        async with self.sessions() as session:
            return await session.get(DocumentRow, document_id)

    async def touch(self, document: DocumentRow, fields: DocumentFields) -> DocumentRow:
        """Content unchanged: keep the chunks, refresh title, source and metadata if they moved."""
        if (document.title, document.source_uri, document.meta) == (
            fields.title,
            fields.source_uri,
            fields.meta,
        ):
            return document
        async with transaction(self.sessions) as session:
            row = await session.get(DocumentRow, document.id, with_for_update=True)
            if row is None:
                return document
            row.title, row.source_uri, row.meta = fields.title, fields.source_uri, fields.meta
            return row

    async def replace(
        self,
        document_id: uuid.UUID,
        fields: DocumentFields,
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
        before_commit: BeforeCommit,
    ) -> ReplaceResult:
        """Write the document and its new chunks (dropping the old ones) atomically.

        `document_id` is used when the document is new. If another ingest stored the same
        content meanwhile, nothing is written and the result is `unchanged`.
        """
        async with transaction(self.sessions) as session:
            await session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                {"key": f"amelia.rag.document:{fields.identity}"},
            )
            result = await session.execute(
                select(DocumentRow).where(DocumentRow.identity == fields.identity).with_for_update()
            )
            row = result.scalar_one_or_none()
            if (
                row is not None
                and row.content_hash == fields.content_hash
                and row.index_signature == fields.index_signature
            ):
                return ReplaceResult(row, unchanged=True)
            now = _now()
            if row is None:
                row = DocumentRow(id=document_id, identity=fields.identity, create_time=now)
                session.add(row)
            else:
                await session.execute(delete(ChunkRow).where(ChunkRow.document_id == row.id))
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
                            "embedding": vector_literal(vector),
                            "headings": " ".join(chunk.heading_path),
                        }
                        for chunk, vector in zip(chunks, vectors, strict=True)
                    ],
                )
            await before_commit(row)
            return ReplaceResult(row, unchanged=False)

    async def delete(
        self, document_id: uuid.UUID, before_commit: BeforeCommit
    ) -> DocumentRow | None:
        """Delete a document (its chunks cascade); None when it does not exist."""
        async with transaction(self.sessions) as session:
            row = await session.get(DocumentRow, document_id, with_for_update=True)
            if row is None:
                return None
            await session.delete(row)
            await session.flush()
            await before_commit(row)
            return row

    async def list(
        self,
        *,
        page_size: int,
        page_token: str,
        types: Sequence[str],
        metadata: dict[str, str],
    ) -> tuple[list[DocumentRow], str]:
        """One page in creation order, and the token of the next page ('' at the end)."""
        query = select(DocumentRow)
        if page_token:
            created, last_id = decode_page_token(page_token)
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
        return rows, encode_page_token(rows[-1].create_time, rows[-1].id)

    async def count_chunks(self, document_id: uuid.UUID | None = None) -> int:
        """Chunks stored (of one document, or in all); used by tests and the bench."""
        query = select(func.count()).select_from(ChunkRow)
        if document_id is not None:
            query = query.where(ChunkRow.document_id == document_id)
        async with self.sessions() as session:
            return int((await session.execute(query)).scalar_one())


def encode_page_token(created: datetime, document_id: uuid.UUID) -> str:
    raw = json.dumps({"t": created.isoformat(), "i": str(document_id)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[datetime, uuid.UUID]:
    invalid = InvalidPageToken(
        "page_token is not valid: pass the next_page_token of a previous response"
    )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        created, document_id = datetime.fromisoformat(data["t"]), uuid.UUID(str(data["i"]))
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise invalid from exc
    if created.tzinfo is None:
        raise invalid
    return created, document_id
