"""documents and chunks, with the HNSW (cosine) and GIN (full-text) indexes.

The `vector(n)` dimension is the `embedding_dimension` attribute passed by the service
(`EMBEDDING_DIMENSION`); a later change of dimension is caught at start, not here.

Revision ID: rag_0001
Revises:
Create Date: 2026-11-26
"""

from alembic import context, op

revision = "rag_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    dimension = int(context.config.attributes.get("embedding_dimension", 384))
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(
        """
        CREATE TABLE documents (
            id uuid PRIMARY KEY,
            identity text NOT NULL UNIQUE,
            title text NOT NULL,
            type varchar(16) NOT NULL
                CONSTRAINT documents_type_check
                CHECK (type IN ('pdf', 'markdown', 'text', 'html', 'code', 'web_page')),
            source_uri text NOT NULL DEFAULT '',
            file_path text NOT NULL DEFAULT '',
            size_bytes bigint NOT NULL,
            content_hash varchar(64) NOT NULL,
            index_signature text NOT NULL,
            metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
            chunk_count integer NOT NULL DEFAULT 0,
            create_time timestamptz NOT NULL DEFAULT now(),
            update_time timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX documents_type_idx ON documents (type)")
    op.execute("CREATE INDEX documents_list_idx ON documents (create_time, id)")
    op.execute(
        f"""
        CREATE TABLE chunks (
            id uuid PRIMARY KEY,
            document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            chunk_index integer NOT NULL,
            content text NOT NULL,
            start_offset integer NOT NULL,
            end_offset integer NOT NULL,
            heading_path text[] NOT NULL DEFAULT '{{}}',
            page integer NOT NULL DEFAULT 0,
            metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            embedding vector({dimension}) NOT NULL,
            tsv tsvector NOT NULL,
            CONSTRAINT chunks_document_index UNIQUE (document_id, chunk_index)
        )
        """
    )
    op.execute(
        "CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)"
    )
    op.execute("CREATE INDEX chunks_tsv_gin ON chunks USING gin (tsv)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS chunks")
    op.execute("DROP TABLE IF EXISTS documents")
