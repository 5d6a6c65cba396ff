"""crons: runs on a schedule (CronService), with the scheduler's claimed-but-unrecorded tick

Revision ID: agents_0005
Revises: agents_0004
"""

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "agents_0005"
down_revision = "agents_0004"
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = True) -> sa.Column[Any]:
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True), nullable=True)
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def _count(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")


def upgrade() -> None:
    op.create_table(
        "crons",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("agent_id", sa.String(63), nullable=True),
        sa.Column("workflow", sa.String(63), nullable=True),
        sa.Column(
            "thread_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("threads.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("schedule", sa.Text(), nullable=False),
        sa.Column("timezone", sa.Text(), nullable=False, server_default=""),
        sa.Column("input", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        _time("end_time"),
        _time("next_run_time"),
        _time("pending_tick"),
        _time("pending_since"),
        sa.Column("pending_missed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_run", postgresql.JSONB(), nullable=True),
        sa.Column("recent", postgresql.JSONB(), nullable=False, server_default="[]"),
        _count("fired_count"),
        _count("skipped_count"),
        _count("failed_count"),
        _time("create_time", nullable=False),
        _time("update_time", nullable=False),
    )
    op.create_index("ix_crons_create_time", "crons", ["create_time", "id"])
    op.create_index(
        "ix_crons_due",
        "crons",
        ["next_run_time"],
        postgresql_where=sa.text("next_run_time IS NOT NULL"),
    )
    op.create_index(
        "ix_crons_pending",
        "crons",
        ["pending_since"],
        postgresql_where=sa.text("pending_tick IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("crons")
