"""runs: a webhook is also called when the run pauses on a question (`webhooks`)

LangGraph Server calls a run's webhook when the run finishes, and a run that stops on an
interrupt has finished there (its answer is a new run). An Amelia run that pauses is the same
run when answered, so its receiver is told of each pause too, then of the end.

`question_sequence` is the sequence of the PAUSED run's `run.interrupted` once it is in the
log (NULL from the pause until then): a pause's delivery is due then, as the end's is once
`terminal_sequence` is set. `webhook_paused_told` is the `question_sequence` of the last pause
whose delivery settled (delivered or given up). `webhook_attempts` now counts the POSTs of one
delivery, the one `webhook_attempts_for` names: a pause's `question_sequence`, or 0 for the
end. `webhook_state` stays "pending" until the end's delivery settles. A run deleted while
owed (agents_0008's trigger) keeps only its end's attempts: a pause's are not the end's.

Revision ID: agents_0010
Revises: agents_0009
"""

import sqlalchemy as sa
from alembic import op

revision = "agents_0010"
down_revision = "agents_0009"
branch_labels = None
depends_on = None

_COLUMNS = ("question_sequence", "webhook_paused_told", "webhook_attempts_for")
_KEEP_OWED = """
    CREATE OR REPLACE FUNCTION runs_keep_owed_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO deleted_run_webhooks (run_id, queue, run, webhook_attempts)
        VALUES (OLD.id, OLD.queue, to_jsonb(OLD), {attempts})
        ON CONFLICT (run_id) DO NOTHING;
        RETURN OLD;
    END $$
"""


def upgrade() -> None:
    for column in _COLUMNS:
        op.add_column("runs", sa.Column(column, sa.BigInteger(), nullable=True))
    # Attempts made before this revision were all of the end's delivery.
    op.execute(
        "UPDATE runs SET webhook_attempts_for = 0 "
        "WHERE webhook_state = 'pending' AND webhook_attempts > 0"
    )
    op.execute(
        _KEEP_OWED.format(
            attempts="CASE WHEN OLD.webhook_attempts_for = 0 THEN OLD.webhook_attempts ELSE 0 END"
        )
    )


def downgrade() -> None:
    op.execute(_KEEP_OWED.format(attempts="OLD.webhook_attempts"))
    for column in reversed(_COLUMNS):
        op.drop_column("runs", column)
