"""agents, threads, runs

Revision ID: agents_0001
Revises:
"""

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "agents_0001"
down_revision = None
branch_labels = None
depends_on = None


def _timestamp(name: str) -> sa.Column[Any]:
    """`<name> timestamptz NOT NULL DEFAULT now()` (the DDL is the same as when each table
    spelled it out: a migration is history)."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def _create_listed_table(name: str, key: Any, *columns: sa.Column[Any]) -> None:
    """Table `name`: its `id` (of type `key`), `columns`, its create and update times, and the
    (create_time, id) index its list pages by."""
    op.create_table(
        name,
        sa.Column("id", key, primary_key=True),
        *columns,
        _timestamp("create_time"),
        _timestamp("update_time"),
    )
    op.create_index(f"ix_{name}_create_time", name, ["create_time", "id"])


def upgrade() -> None:
    _create_listed_table(
        "agents",
        sa.String(63),
        sa.Column("display_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("system_prompt", sa.Text(), nullable=False, server_default=""),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("temperature", sa.Double(), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Double(), nullable=False),
        sa.Column("retry_attempts", sa.Integer(), nullable=False),
        sa.Column("context_sources", postgresql.JSONB(), nullable=False, server_default="[]"),
        sa.Column("tools", postgresql.JSONB(), nullable=False, server_default="[]"),
    )
    _create_listed_table(
        "threads",
        postgresql.UUID(as_uuid=True),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default="{}"),
    )
    op.create_table(
        "runs",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("agent_id", sa.String(63), nullable=True),
        sa.Column("workflow", sa.String(63), nullable=True),
        sa.Column(
            "thread_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("threads.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("input", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("agent_config", postgresql.JSONB(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output", postgresql.JSONB(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False, server_default=""),
        _timestamp("create_time"),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("interrupt", postgresql.JSONB(), nullable=True),
        sa.Column("has_resume", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("resume_value", postgresql.JSONB(none_as_null=False), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("timeout_seconds", sa.Double(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True, unique=True),
        sa.Column("worker", sa.Text(), nullable=False, server_default=""),
        sa.Column("terminal_sequence", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_runs_create_time", "runs", ["create_time", "id"])
    op.create_index("ix_runs_thread", "runs", ["thread_id"])
    op.create_index("ix_runs_agent", "runs", ["agent_id"])
    op.create_index(
        "uq_runs_active_thread",
        "runs",
        ["thread_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('QUEUED', 'RUNNING', 'PAUSED')"),
    )


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("threads")
    op.drop_table("agents")
