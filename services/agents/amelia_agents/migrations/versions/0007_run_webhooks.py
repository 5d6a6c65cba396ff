"""runs: a webhook called when the run ends, owed until delivered (`webhooks`)

`webhook` is the URL given at CreateRun; `webhook_state` is "pending" from then until the POST
is answered 2xx ("delivered") or its attempts are spent ("failed"); `webhook_attempts` counts
the POSTs made; `webhook_due` is when the next may be made (NULL: as soon as the run has
ended; a claimed delivery's lease). Kept in the run's row, so a delivery owed when the agents
service stops is made after it starts again. The partial index holds the owed ones only.

Revision ID: agents_0007
Revises: agents_0006
"""

import sqlalchemy as sa
from alembic import op

revision = "agents_0007"
down_revision = "agents_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("webhook", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("webhook_state", sa.Text(), nullable=True))
    op.add_column(
        "runs", sa.Column("webhook_attempts", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column("runs", sa.Column("webhook_due", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_runs_webhooks_owed",
        "runs",
        ["queue", "webhook_due"],
        postgresql_where=sa.text("webhook_state = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_webhooks_owed", table_name="runs")
    for column in ("webhook_due", "webhook_attempts", "webhook_state", "webhook"):
        op.drop_column("runs", column)
