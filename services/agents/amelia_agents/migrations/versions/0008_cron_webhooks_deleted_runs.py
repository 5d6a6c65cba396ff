"""crons: a webhook for every run they make; runs deleted while a webhook is owed keep it

`crons.webhook` is copied into each run the cron makes (`run.webhook`, LangGraph Server's cron
`webhook`). `deleted_run_webhooks` keeps the delivery owed by a run that is deleted before it
was delivered — a rollback's stopped run (multitask), or a run deleted with its thread: the
trigger copies the row (`to_jsonb`) in the deleting transaction itself, so the delivery is as
durable as the delete and no code that deletes runs has to remember it. `webhooks` delivers
it (the run as it was, CANCELLED "rolled back by runs/…") and deletes the copy once settled.

Revision ID: agents_0008
Revises: agents_0007
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "agents_0008"
down_revision = "agents_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("crons", sa.Column("webhook", sa.Text(), nullable=True))
    op.create_table(
        "deleted_run_webhooks",
        sa.Column("run_id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("queue", sa.Text(), nullable=True),
        sa.Column("run", postgresql.JSONB(), nullable=False),
        sa.Column("webhook_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("webhook_due", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "delete_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_deleted_run_webhooks_due", "deleted_run_webhooks", ["queue", "webhook_due"])
    op.execute(
        """
        CREATE FUNCTION runs_keep_owed_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO deleted_run_webhooks (run_id, queue, run, webhook_attempts)
            VALUES (OLD.id, OLD.queue, to_jsonb(OLD), OLD.webhook_attempts)
            ON CONFLICT (run_id) DO NOTHING;
            RETURN OLD;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER runs_keep_owed_webhook BEFORE DELETE ON runs FOR EACH ROW "
        "WHEN (OLD.webhook_state = 'pending') EXECUTE FUNCTION runs_keep_owed_webhook()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER runs_keep_owed_webhook ON runs")
    op.execute("DROP FUNCTION runs_keep_owed_webhook()")
    op.drop_table("deleted_run_webhooks")
    op.drop_column("crons", "webhook")
