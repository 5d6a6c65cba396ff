"""runs: the request_id and answer of the ResumeRun that answered the run (its retry gets the run)

Revision ID: agents_0003
Revises: agents_0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "agents_0003"
down_revision = "agents_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("resume_request", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "resume_request")
