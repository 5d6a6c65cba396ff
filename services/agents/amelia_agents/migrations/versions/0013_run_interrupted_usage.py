"""runs: the tokens of model calls in nodes an interrupted pick-up did not finish

`Run.usage` counts every model call, also those of a pick-up that died, froze or stopped for an
outage before its node finished (the node ran again in a later pick-up), so the total was bigger
than the run's steps with nothing saying why (QA s26 H2: 675 in / 517 out against steps of
300 / 300). `open_*`: the calls of nodes the pick-up running now has not finished; the next
pick-up moves what is left there to `interrupted_*`, shown as `TokenUsage.interrupted_*`.

Revision ID: agents_0013
Revises: agents_0012
"""

import sqlalchemy as sa
from alembic import op

revision = "agents_0013"
down_revision = "agents_0012"
branch_labels = None
depends_on = None

COLUMNS = (
    "open_input_tokens",
    "open_output_tokens",
    "interrupted_input_tokens",
    "interrupted_output_tokens",
)


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column(
            "runs", sa.Column(column, sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_column("runs", column)
