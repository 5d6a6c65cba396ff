"""agents, crons: context sources stored as `documents/<uuid>` in another spelling, rewritten
as the mesh names documents

Until session 19 a context source was checked with `uuid.UUID()`, which reads a uuid in many
spellings (upper case, no hyphens, `{…}`, `urn:uuid:…`), and stored as given. The RAG service
now takes a document's name only as it writes it (`amelia_common.names.uuid_name`), so an agent
or cron saved with another spelling failed every run at retrieval. Each such entry is rewritten
in the canonical form; entries that are no uuid at all, and `documents/*`, are left as they are.
The downgrade keeps the canonical names (they are what the old code accepted too).

Revision ID: agents_0011
Revises: agents_0010
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "agents_0011"
down_revision = "agents_0010"
branch_labels = None
depends_on = None

_PREFIX = "documents/"


def canonical_source(source: Any) -> Any:
    """`documents/<uuid in any spelling uuid.UUID reads>` → `documents/<str(uuid)>`."""
    if not isinstance(source, str) or not source.startswith(_PREFIX):
        return source
    try:
        return _PREFIX + str(uuid.UUID(source[len(_PREFIX) :]))
    except ValueError:
        return source


def _canonical_list(sources: Any) -> Any:
    return [canonical_source(s) for s in sources] if isinstance(sources, list) else sources


def upgrade() -> None:
    bind = op.get_bind()
    agents = bind.execute(
        sa.text(
            "SELECT id, context_sources FROM agents WHERE jsonb_typeof(context_sources) = 'array'"
        )
    )
    for agent_id, sources in agents.fetchall():
        fixed = _canonical_list(sources)
        if fixed != sources:
            bind.execute(
                sa.text("UPDATE agents SET context_sources = CAST(:s AS jsonb) WHERE id = :id"),
                {"s": json.dumps(fixed), "id": agent_id},
            )
    crons = bind.execute(
        sa.text("SELECT id, input FROM crons WHERE input -> 'context_sources' IS NOT NULL")
    )
    for cron_id, given in crons.fetchall():
        fixed = {**given, "context_sources": _canonical_list(given["context_sources"])}
        if fixed != given:
            bind.execute(
                sa.text("UPDATE crons SET input = CAST(:i AS jsonb) WHERE id = :id"),
                {"i": json.dumps(fixed), "id": cron_id},
            )


def downgrade() -> None:
    pass
