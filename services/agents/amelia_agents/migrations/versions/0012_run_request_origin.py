"""runs: `request_origin`, what a request_id's run was made by, so a retry of another request
with the same id is refused

CreateRun checks a retried request_id against the run it made (target, thread, input), but
RerunRun and ForkRun returned whatever run the id had made — a CreateRun's, another source's
rerun, a fork with other values (QA s20: six concurrent forks with one id and six different
values all got the first one). The run now keeps what made it: `CreateRun`, `RerunRun of
runs/<id>[ on threads/<id>]` or `ForkRun of runs/<id> at <checkpoint> with values <digest>`;
NULL for runs made without a request_id and for those made before this column.

Revision ID: agents_0012
Revises: agents_0011
"""

import sqlalchemy as sa
from alembic import op

revision = "agents_0012"
down_revision = "agents_0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("request_origin", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "request_origin")
