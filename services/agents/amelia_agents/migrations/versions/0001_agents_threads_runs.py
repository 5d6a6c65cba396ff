"""agents, threads, runs

Revision ID: agents_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "agents_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(63), primary_key=True),
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
        sa.Column(
            "create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_agents_create_time", "agents", ["create_time", "id"])
    op.create_table(
        "threads",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column(
            "create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_threads_create_time", "threads", ["create_time", "id"])
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
        sa.Column(
            "create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
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
