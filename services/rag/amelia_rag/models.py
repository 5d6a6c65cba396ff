"""The tables RagService owns: `documents` and their `chunks`.

A document is identified by `identity` (its file path, else source URI, else title), so ingesting
the same file again updates the same row. It is `indexing` from the moment its chunks are stored
until the background indexer has embedded them all (`ready`), or `failed`. Chunks carry the
embedding (`vector(n)`, n fixed by
`EMBEDDING_DIMENSION` when the table was created) and a `tsvector` for full-text search; they go
with their document (ON DELETE CASCADE).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from amelia.v1 import events_pb2
from amelia_common.eventlog import make_event

DOCUMENT_TYPES = ("pdf", "markdown", "text", "html", "code", "web_page")


class Base(DeclarativeBase):
    """Declarative base of the rag service's tables (its own Alembic history)."""


class DocumentRow(Base):
    """One ingested document."""

    __tablename__ = "documents"
    __table_args__ = (
        CheckConstraint(
            "type IN ('pdf', 'markdown', 'text', 'html', 'code', 'web_page')",
            name="documents_type_check",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    identity: Mapped[str] = mapped_column(Text, unique=True)
    title: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    source_uri: Mapped[str] = mapped_column(Text, default="")
    file_path: Mapped[str] = mapped_column(Text, default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str] = mapped_column(String(64))
    # What produced the chunks (embedding model, dimension, chunking); a change re-indexes.
    index_signature: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    update_time: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # indexing (chunks stored, embeddings being computed) → ready, or failed (see index_error).
    state: Mapped[str] = mapped_column(String(16), default="indexing")
    index_error: Mapped[str] = mapped_column(Text, default="")
    # Which rag process indexes it, until when (renewed while it works), and how many tries.
    lease_owner: Mapped[str | None] = mapped_column(Text, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    index_attempts: Mapped[int] = mapped_column(Integer, default=0)


class ChunkRow(Base):
    """One passage of a document, with its embedding and full-text vector."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("document_id", "chunk_index", name="chunks_document_index"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("documents.id", ondelete="CASCADE")
    )
    chunk_index: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    start_offset: Mapped[int] = mapped_column(Integer)
    end_offset: Mapped[int] = mapped_column(Integer)
    heading_path: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    page: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    # The dimension is the table's (fixed at creation); Vector() accepts any here. NULL until
    # the background indexer has embedded the chunk.
    embedding: Mapped[Any] = mapped_column(Vector(), nullable=True)
    tsv: Mapped[Any] = mapped_column(TSVECTOR)
    # Which section of the document it is in, and the passage a hit on it returns.
    section: Mapped[int] = mapped_column(Integer, default=0)
    passage_start: Mapped[int | None] = mapped_column(Integer, nullable=True)
    passage_end: Mapped[int | None] = mapped_column(Integer, nullable=True)
    passage: Mapped[str | None] = mapped_column(Text, nullable=True)


def document_event(row: DocumentRow, **extra: Any) -> dict[str, Any]:
    """The data of a `document.*` event: what the document is, then what happened to it."""
    return {"title": row.title, "type": row.type, "content_hash": row.content_hash, **extra}


def change_event(event_type: str, document_id: uuid.UUID, data: dict[str, Any]) -> events_pb2.Event:
    """The event telling of a change to a document, for the change's outbox (store.Tell); its
    source is the event log's (`EventLog.prepare`)."""
    subject = f"documents/{document_id}"
    return make_event(event_type, subject, {"document": subject, **data}, source="")
