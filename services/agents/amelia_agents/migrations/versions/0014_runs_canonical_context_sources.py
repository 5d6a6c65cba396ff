"""runs: the context sources a run keeps, rewritten as the mesh names documents (agents_0011
did agents and crons)

A run keeps its own copy of its sources: `agent_config` (the agent's snapshot taken at
CreateRun) and, for `chat`, `input.context_sources`. agents_0011 rewrote the agents and crons
saved with a document id in another spelling (upper case, no hyphens, `{…}`, `urn:uuid:…`),
not these copies, so after the upgrade a rerun of such a run, or one of them queued or paused
across it, failed at retrieval: the RAG service takes a document's name only as it writes it
(QA s28). Each such entry is rewritten by agents_0011's own rule; entries that are no uuid,
and `documents/*`, are left as they are. The downgrade keeps the canonical names (the old code
accepted them too).

Revision ID: agents_0014
Revises: agents_0013
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision = "agents_0014"
down_revision = "agents_0013"
branch_labels = None
depends_on = None

# Only the runs holding a document entry not spelt as `str(uuid)` are read and written.
_MISSPELT = r"""
    EXISTS (SELECT 1 FROM jsonb_array_elements_text(
                CASE WHEN jsonb_typeof({column} -> 'context_sources') = 'array'
                     THEN {column} -> 'context_sources' ELSE CAST('[]' AS jsonb) END) AS s(source)
            WHERE source LIKE 'documents/%' AND source <> 'documents/*'
              AND source !~ '^documents/[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$')
"""
_SELECT = (
    "SELECT id, agent_config, input FROM runs WHERE "
    + _MISSPELT.format(column="agent_config")
    + " OR "
    + _MISSPELT.format(column="input")
)


def _canonical_source() -> Callable[[Any], Any]:
    """agents_0011's rule for one source (one rule for agents, crons and runs)."""
    script = context.script.get_revision("agents_0011")
    assert script is not None and script.module is not None
    rule: Callable[[Any], Any] = script.module.canonical_source
    return rule


def _rewritten(holder: Any, canonical: Callable[[Any], Any]) -> Any:
    """`holder` (an agent snapshot or a run's input) with its context sources rewritten."""
    if not isinstance(holder, dict) or not isinstance(holder.get("context_sources"), list):
        return holder
    return {**holder, "context_sources": [canonical(s) for s in holder["context_sources"]]}


def upgrade() -> None:
    bind = op.get_bind()
    canonical = _canonical_source()
    for run_id, agent_config, given in bind.execute(sa.text(_SELECT)).fetchall():
        changed = {
            column: json.dumps(fixed)
            for column, held in (("agent_config", agent_config), ("input", given))
            if (fixed := _rewritten(held, canonical)) != held
        }
        if changed:
            assignments = ", ".join(f"{c} = CAST(:{c} AS jsonb)" for c in changed)
            bind.execute(
                sa.text(f"UPDATE runs SET {assignments} WHERE id = :id"), {**changed, "id": run_id}
            )


def downgrade() -> None:
    pass
