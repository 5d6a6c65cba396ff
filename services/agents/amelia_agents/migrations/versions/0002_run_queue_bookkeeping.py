"""runs: the queue a run waits in, when it was last queued, and its pick-ups since then

Revision ID: agents_0002
Revises: agents_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "agents_0002"
down_revision = "agents_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("queue", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("queued_time", sa.DateTime(timezone=True), nullable=True))
    op.add_column("runs", sa.Column("pickups", sa.Integer(), nullable=False, server_default="0"))
    op.create_index(
        "ix_runs_unfinished",
        "runs",
        ["queue"],
        postgresql_where=sa.text("status IN ('QUEUED', 'RUNNING')"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_unfinished", "runs")
    op.drop_column("runs", "pickups")
    op.drop_column("runs", "queued_time")
    op.drop_column("runs", "queue")
