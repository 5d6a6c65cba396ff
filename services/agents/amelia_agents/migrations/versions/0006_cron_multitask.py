"""crons: what a tick does on a busy thread (the runs' multitask strategy)

A cron's `multitask_strategy` is passed to the CreateRun each of its ticks makes: "reject" (the
default: the tick is skipped, as before), "enqueue", "interrupt" or "rollback". Existing crons
get "reject", which is what they did.

Revision ID: agents_0006
Revises: agents_0005
"""

import sqlalchemy as sa
from alembic import op

revision = "agents_0006"
down_revision = "agents_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "crons",
        sa.Column("multitask_strategy", sa.Text(), nullable=False, server_default="reject"),
    )


def downgrade() -> None:
    op.drop_column("crons", "multitask_strategy")
