"""Background indexing and parent-child chunks.

documents: `state` (indexing → ready, or failed with `index_error`), and a lease (`lease_owner`,
`lease_until`, `index_attempts`) so that one rag replica indexes a document and another takes
over when it dies. Documents already stored are ready.

chunks: the embedding is filled in by the indexer (NULL until then); `section` and the passage
window (`passage_start`, `passage_end`, `passage`) say what a hit on the chunk returns.

Revision ID: rag_0002
Revises: rag_0001
Create Date: 2026-12-01
"""

from alembic import op

revision = "rag_0002"
down_revision = "rag_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE documents
            ADD COLUMN state varchar(16) NOT NULL DEFAULT 'ready'
                CONSTRAINT documents_state_check CHECK (state IN ('indexing', 'ready', 'failed')),
            ADD COLUMN index_error text NOT NULL DEFAULT '',
            ADD COLUMN lease_owner text,
            ADD COLUMN lease_until timestamptz,
            ADD COLUMN index_attempts integer NOT NULL DEFAULT 0
        """
    )
    op.execute(
        "CREATE INDEX documents_indexing_idx ON documents (update_time, id)"
        " WHERE state = 'indexing'"
    )
    op.execute(
        """
        ALTER TABLE chunks
            ALTER COLUMN embedding DROP NOT NULL,
            ADD COLUMN section integer NOT NULL DEFAULT 0,
            ADD COLUMN passage_start integer,
            ADD COLUMN passage_end integer,
            ADD COLUMN passage text
        """
    )
    op.execute(
        "CREATE INDEX chunks_unembedded_idx ON chunks (document_id, chunk_index)"
        " WHERE embedding IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS chunks_unembedded_idx")
    op.execute("DELETE FROM chunks WHERE embedding IS NULL")
    op.execute(
        "ALTER TABLE chunks ALTER COLUMN embedding SET NOT NULL, DROP COLUMN section,"
        " DROP COLUMN passage_start, DROP COLUMN passage_end, DROP COLUMN passage"
    )
    op.execute("DROP INDEX IF EXISTS documents_indexing_idx")
    op.execute(
        "ALTER TABLE documents DROP COLUMN state, DROP COLUMN index_error,"
        " DROP COLUMN lease_owner, DROP COLUMN lease_until, DROP COLUMN index_attempts"
    )
