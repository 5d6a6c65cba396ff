"""agents_0011: agents and crons saved before names were strict, with a context source spelt
otherwise than the mesh names documents (QA s19: such an agent failed every run at retrieval),
read as the mesh names them after the upgrade; nothing else in them changes."""

from __future__ import annotations

import json
import uuid
from typing import Any

from agents_helpers import migrate_agents_to
from sqlalchemy import text

from amelia_agents.retrieval import check_sources

DOC = uuid.UUID("4f1c0000-0000-4000-8000-0000000000ab")
STORED = [
    f"documents/{str(DOC).upper()}",
    f"documents/{DOC.hex}",
    f"documents/{{{DOC}}}",
    f"documents/urn:uuid:{DOC}",
    f"documents/{DOC}",
    "documents/*",
    "documents/not-a-uuid",
]
AFTER = [f"documents/{DOC}"] * 5 + ["documents/*", "documents/not-a-uuid"]


async def test_context_sources_in_other_spellings_are_rewritten_as_the_mesh_names_them(
    infra: Any,
) -> None:
    from amelia_agents.resources import migrate
    from amelia_common.db import create_engine

    async with infra.scratch_database("sources_migration") as url:
        engine = create_engine(infra.settings(), url)
        try:
            await migrate(engine)
            async with engine.begin() as conn:
                await conn.run_sync(migrate_agents_to("agents_0010"))
                await conn.execute(
                    text(
                        "INSERT INTO agents (id, model, temperature, max_tokens, timeout_seconds,"
                        " retry_attempts, context_sources) VALUES"
                        " ('old', 'offline:echo', 0.5, 100, 30, 1, CAST(:s AS jsonb)),"
                        " ('none', 'offline:echo', 0.5, 100, 30, 1, '[]')"
                    ),
                    {"s": json.dumps(STORED)},
                )
                cron_input = {"message": "hi", "context_sources": STORED}
                await conn.execute(
                    text(
                        "INSERT INTO crons (id, schedule, workflow, input) VALUES"
                        " (:a, '* * * * *', 'chat', CAST(:i AS jsonb)),"
                        " (:b, '* * * * *', 'chat', '{\"message\": \"no sources\"}')"
                    ),
                    {"a": uuid.uuid4(), "b": uuid.uuid4(), "i": json.dumps(cron_input)},
                )
                await conn.run_sync(migrate_agents_to("head"))
                agents = dict(
                    (await conn.execute(text("SELECT id, context_sources FROM agents"))).all()
                )
                crons = [row[0] for row in await conn.execute(text("SELECT input FROM crons"))]
        finally:
            await engine.dispose()
    assert agents == {"old": AFTER, "none": []}
    assert sorted(crons, key=len) == [
        {"message": "no sources"},
        {"message": "hi", "context_sources": AFTER},
    ]
    # What a run's retrieval then takes: the canonical names pass the one check of a source.
    assert check_sources(AFTER[:6]) == AFTER[:6]
