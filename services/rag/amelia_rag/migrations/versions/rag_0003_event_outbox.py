"""The event outbox: a document's events written in the transaction that makes its change.

`rag_event_outbox` holds each event (a serialized amelia.v1.Event, its id set) until NATS
JetStream has stored it (`amelia_common.eventlog.outbox`): a change rolled back leaves no event,
and one committed while NATS was away is published once it is back.

Revision ID: rag_0003
Revises: rag_0002
Create Date: 2026-12-04
"""

from alembic import op

revision = "rag_0003"
down_revision = "rag_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE rag_event_outbox (
            seq bigserial PRIMARY KEY,
            event bytea NOT NULL,
            create_time timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE rag_event_outbox")
