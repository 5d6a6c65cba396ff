"""Runs that wait on a slow model do not starve quick runs: with the default AGENT_WORKERS, more
chat runs than the old default's loops sit in a model call that does not answer, and an echo
run created after them still completes while they wait (QA saw it wait 2 min 25 s behind 8 chat
runs, with 2 loops per process)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from agents_fake_llm import FakeAnthropic
from agents_helpers import S, create_run, serve_agents, wait_status

from amelia_agents.server import build_service as build_agents
from amelia_common import connections
from amelia_common.db import libpq_url
from amelia_common.settings import Settings

OLD_DEFAULT_LOOPS = 2
HELD = 8  # the QA's chat runs; above the old default's loops of a 2-replica mesh (4)
ECHO_DEADLINE_SECONDS = 60  # an echo run takes milliseconds; starved, it waits for a held run


async def _until_held(fake: FakeAnthropic, model: str, count: int, timeout: float = 120) -> None:
    """Until `count` requests for `model` reached the fake server (each holds its reply)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(fake.models(model)) < count:
        held = len(fake.models(model))
        assert asyncio.get_running_loop().time() < deadline, f"only {held} runs reached the model"
        await asyncio.sleep(0.05)


async def test_an_echo_run_completes_while_model_runs_are_held(
    infra: object, events_address: str, fake_anthropic: FakeAnthropic
) -> None:
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        EVENTS_ADDRESS=events_address,
        ANTHROPIC_API_KEY="sk-ant-test-key",
        ANTHROPIC_BASE_URL=fake_anthropic.url,
        RUNS_QUEUE_STREAM=f"AMELIA_RUNS_CONCURRENCY_{uuid.uuid4().hex[:8]}",
    )
    assert settings.AGENT_WORKERS > HELD > 2 * OLD_DEFAULT_LOOPS  # the defaults under test
    key = uuid.uuid4().hex[:8]
    async with serve_agents(settings) as agents:
        try:
            held = [
                await create_run(
                    agents,
                    workflow="workflows/chat",
                    input={"message": f"slow question {i}", "model": f"anthropic:hold-{key}"},
                )
                for i in range(HELD)
            ]
            await _until_held(fake_anthropic, f"hold-{key}", HELD)
            echo = await create_run(agents, workflow="workflows/echo", input={"message": "quick"})
            done = await wait_status(
                agents, echo.name, S.RUN_STATUS_COMPLETED, timeout=ECHO_DEADLINE_SECONDS
            )
            assert "quick" in dict(done.output)["message"]
            # Observed before any model reply was let go: every model run is still waiting.
            statuses = [
                (await agents.GetRun(S.GetRunRequest(name=run.name))).run.status for run in held
            ]
            assert statuses == [S.RUN_STATUS_RUNNING] * HELD
        finally:
            fake_anthropic.release(key)
        for run in held:
            await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED, timeout=60)
        assert len(fake_anthropic.models(f"hold-{key}")) == HELD  # one model call each


def test_the_default_mesh_at_three_replicas_fits_a_stock_postgresql() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    # max_connections 100 less superuser_reserved_connections 3; `amelia status` needs one more.
    assert connections.mesh_connections(settings, replicas=3) + 1 <= 97
    assert connections.embedded_max_connections(settings) >= connections.mesh_connections(
        settings, replicas=connections.MESH_REPLICAS_AT_MOST
    )


async def test_an_agents_process_that_cannot_fit_stops_at_start_saying_why(
    infra: object, events_address: str
) -> None:
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        EVENTS_ADDRESS=events_address, AGENT_WORKERS=1000
    )
    with pytest.raises(connections.ConnectionBudgetError, match="AGENT_WORKERS=1000"):
        await build_agents(settings)


async def test_the_embedded_postgresql_takes_what_the_default_mesh_may_open(
    infra: object,
) -> None:
    url = infra.database_url  # type: ignore[attr-defined]
    if infra.postgres is None:  # type: ignore[attr-defined]
        pytest.skip("DATABASE_URL names an external server")
    conn = await asyncpg.connect(libpq_url(url))
    try:
        taken = int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()
    assert taken >= connections.EMBEDDED_MAX_CONNECTIONS_AT_LEAST
