"""runs: multitask strategies on a busy thread (enqueue, interrupt, rollback)

A run created with `multitask_strategy` enqueue (interrupt, rollback: after stopping the thread's
runs) waits QUEUED behind the thread's active run (`queued_behind`) without a job; when that run
ends, the first waiting run is admitted (`queued_behind` cleared, its job queued). One run of a
thread executes at a time: the unique index now counts the admitted active run only. A run a
rollback stopped (`rolled_back`) is deleted with its checkpoints once its executor stopped.

Revision ID: agents_0004
Revises: agents_0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "agents_0004"
down_revision = "agents_0003"
branch_labels = None
depends_on = None

_ACTIVE = "status IN ('QUEUED', 'RUNNING', 'PAUSED')"


def upgrade() -> None:
    op.add_column("runs", sa.Column("multitask_strategy", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("queued_behind", postgresql.UUID(as_uuid=True), nullable=True))
    op.add_column(
        "runs",
        sa.Column("rolled_back", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.drop_index("uq_runs_active_thread", "runs")
    op.create_index(
        "uq_runs_active_thread",
        "runs",
        ["thread_id"],
        unique=True,
        postgresql_where=sa.text(f"{_ACTIVE} AND queued_behind IS NULL"),
    )
    op.create_index(
        "ix_runs_waiting",
        "runs",
        ["thread_id", "create_time"],
        postgresql_where=sa.text("status = 'QUEUED' AND queued_behind IS NOT NULL"),
    )
    op.create_index(
        "ix_runs_rolled_back", "runs", ["thread_id"], postgresql_where=sa.text("rolled_back")
    )


def downgrade() -> None:
    op.drop_index("ix_runs_rolled_back", "runs")
    op.drop_index("ix_runs_waiting", "runs")
    op.drop_index("uq_runs_active_thread", "runs")
    op.create_index(
        "uq_runs_active_thread",
        "runs",
        ["thread_id"],
        unique=True,
        postgresql_where=sa.text(_ACTIVE),
    )
    op.drop_column("runs", "rolled_back")
    op.drop_column("runs", "queued_behind")
    op.drop_column("runs", "multitask_strategy")
