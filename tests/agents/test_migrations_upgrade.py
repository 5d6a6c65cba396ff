"""An install upgraded from agents_0008 (the schema of 2026-12-03, commit 93461fc) with runs
in it: what those runs carry still works after the upgrade (QA s28).

A run keeps its own copy of its context sources (its agent's snapshot, a `chat` run's input).
Saved in another spelling of a document's uuid (which the code of then took and the RAG
service of now refuses), a rerun of the run, or the run itself when queued or paused across the
upgrade, failed at retrieval: agents_0011 had rewritten only the agents and crons.

And an agents service started on such a database migrates it and delivers the webhooks the old
code still owed: a run's end, and a deleted run's copy (its row as the old schema had it)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from agents_helpers import migrate_agents_to
from sqlalchemy import text
from test_agents_webhooks_restart import agents_process
from webhook_receiver import receiving

from amelia_agents.retrieval import search_request
from amelia_common.embedded import free_port
from amelia_common.names import uuid_name

DOC = uuid.UUID("4f1c0000-0000-4000-8000-0000000000ab")
CANONICAL = f"documents/{DOC}"
# The spellings the old code stored as given (`uuid.UUID()` read them all).
OTHER_SPELLINGS = [
    f"documents/{str(DOC).upper()}",
    f"documents/{DOC.hex}",
    f"documents/{{{DOC}}}",
    f"documents/urn:uuid:{DOC}",
]
KEPT = ["documents/*", "documents/not-a-uuid"]

AGENT_RUN, CHAT_RUN, PAUSED_RUN, PLAIN_RUN = (uuid.uuid4() for _ in range(4))
SNAPSHOT = {
    "model": "offline:echo",
    "temperature": 0.5,
    "max_tokens": 100,
    "context_sources": [*OTHER_SPELLINGS, *KEPT],
}
CHAT_INPUT = {"message": "who kept the light?", "context_sources": [OTHER_SPELLINGS[0]]}


async def _populate_as_of_agents_0008(conn: Any) -> None:
    """Rows as the code of agents_0008 wrote them: a completed agent run, a queued `chat` run
    with its own sources, a paused one, and a run without sources."""
    runs = [
        (AGENT_RUN, "agent", None, SNAPSHOT, {"message": "hi"}, "COMPLETED"),
        (CHAT_RUN, None, "chat", None, CHAT_INPUT, "QUEUED"),
        (PAUSED_RUN, "agent", None, SNAPSHOT, {"message": "plan"}, "PAUSED"),
        (PLAIN_RUN, None, "echo", None, {"message": "no sources"}, "COMPLETED"),
    ]
    for rid, agent, workflow, config, given, status in runs:
        thread = uuid.uuid4()  # one active run a thread
        await conn.execute(text("INSERT INTO threads (id) VALUES (:t)"), {"t": thread})
        await conn.execute(
            text(
                "INSERT INTO runs (id, agent_id, workflow, thread_id, input, agent_config, status)"
                " VALUES (:id, :agent, :workflow, :thread, CAST(:input AS jsonb),"
                " CAST(:config AS jsonb), :status)"
            ),
            {
                "id": rid,
                "agent": agent,
                "workflow": workflow,
                "thread": thread,
                "input": json.dumps(given),
                "config": None if config is None else json.dumps(config),
                "status": status,
            },
        )


def _documents_searched(sources: list[str]) -> list[str]:
    """The document names a run's retrieval sends the RAG service, each checked as the RAG
    service checks them (BadNameError for a spelling it refuses)."""
    documents = list(search_request("q", sources, 5).documents)
    for name in documents:
        uuid_name(name, "documents", "documents")
    return documents


async def test_runs_saved_before_the_upgrade_search_their_documents_after_it(infra: Any) -> None:
    from amelia_agents.resources import migrate
    from amelia_common.db import create_engine

    async with infra.scratch_database("runs_sources_upgrade") as url:
        engine = create_engine(infra.settings(), url)
        try:
            await migrate(engine)
            async with engine.begin() as conn:
                await conn.run_sync(migrate_agents_to("agents_0008"))
                await _populate_as_of_agents_0008(conn)
                await conn.run_sync(migrate_agents_to("head"))
                rows = {
                    rid: (config, given, status)
                    for rid, config, given, status in await conn.execute(
                        text("SELECT id, agent_config, input, status FROM runs")
                    )
                }
        finally:
            await engine.dispose()

    after = [CANONICAL] * len(OTHER_SPELLINGS) + KEPT
    for rid in (AGENT_RUN, PAUSED_RUN):
        config, given, _ = rows[rid]
        assert config == {**SNAPSHOT, "context_sources": after}  # nothing else changed
        # A rerun takes the snapshot: its retrieval asks the RAG service for the document.
        assert _documents_searched(config["context_sources"][: len(OTHER_SPELLINGS)]) == [CANONICAL]
    config, given, status = rows[CHAT_RUN]
    assert (config, status) == (None, "QUEUED")
    assert given == {**CHAT_INPUT, "context_sources": [CANONICAL]}
    assert _documents_searched(given["context_sources"]) == [CANONICAL]
    assert rows[PLAIN_RUN][:2] == (None, {"message": "no sources"})


async def test_an_agents_service_started_on_an_agents_0008_database_delivers_what_it_owed(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    from amelia_agents.resources import migrate
    from amelia_common.db import create_engine

    queue = f"AMELIA_RUNS_UPGRADE_{uuid.uuid4().hex[:8]}"
    ended, deleted = uuid.uuid4(), uuid.uuid4()
    async with receiving() as receiver, infra.scratch_database("webhooks_upgrade") as url:
        engine = create_engine(infra.settings(), url)
        try:
            await migrate(engine)
            async with engine.begin() as conn:
                await conn.run_sync(migrate_agents_to("agents_0008"))
                for rid, status in ((ended, "COMPLETED"), (deleted, "RUNNING")):
                    thread = uuid.uuid4()
                    await conn.execute(text("INSERT INTO threads (id) VALUES (:t)"), {"t": thread})
                    # As the old code left them: the end's first POST failed (attempt 1), the
                    # running run's delivery not begun.
                    await conn.execute(
                        text(
                            "INSERT INTO runs (id, workflow, thread_id, input, status, queue,"
                            " webhook, webhook_state, webhook_attempts, terminal_sequence)"
                            " VALUES (:id, 'echo', :thread, '{\"message\": \"old\"}', :status,"
                            " :queue, :hook, 'pending', :attempts, :sequence)"
                        ),
                        {
                            "id": rid,
                            "thread": thread,
                            "status": status,
                            "queue": queue,
                            "hook": receiver.url,
                            "attempts": 1 if rid == ended else 0,
                            "sequence": 1 if rid == ended else None,
                        },
                    )
                # Its thread deleted: agents_0008's trigger keeps the delivery it owed.
                await conn.execute(text("DELETE FROM runs WHERE id = :id"), {"id": deleted})
        finally:
            await engine.dispose()
        port = free_port()
        env = {
            "DATABASE_URL": url,
            "AGENTS_GRPC_PORT": str(port),
            "EVENTS_ADDRESS": events_address,
            "RUNS_QUEUE_STREAM": queue,
        }
        service = agents_process(infra.settings(), env, tmp_path / "agents.log")
        try:
            await service.wait_log("listening")
            told = {h.body["name"]: h for h in await receiver.wait_for(2, timeout=90)}
        finally:
            await service.stop()
    end = told[f"runs/{ended}"]
    assert end.body["status"] == "RUN_STATUS_COMPLETED"
    assert end.headers["x-amelia-attempt"] == "2"  # the old code's attempt counted
    assert "x-amelia-run-deleted" not in end.headers
    gone = told[f"runs/{deleted}"]
    assert gone.headers["x-amelia-run-deleted"] == "true"
    assert gone.body["status"] == "RUN_STATUS_CANCELLED"
    assert gone.body["error"] == "deleted with its thread"
