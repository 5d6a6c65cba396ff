"""A run whose graph reached its end but whose end could not be recorded is finished by its next
pick-up from the final checkpoint — and that pick-up says so with `run.resumed`, as every
later pick-up does (QA s21: the stream showed attempt 1's nodes, then `run.completed` with
attempt 2, and nothing between to tell a watcher a second worker had taken over).

The instant is arranged, not hoped for: a trigger of this test's own refuses the run's first
COMPLETED update with PostgreSQL's "cannot connect now" (57P03), as a database going away at
that moment would answer; the worker gives the job back and picks it up again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from agents_helpers import S, collect, create_run, data, serve_agents, types, wait_status
from sqlalchemy import text
from test_agents_queue_faults import FINISHED, fault_settings

from amelia_common.db import create_engine
from amelia_common.settings import Settings

QUEUE = "AMELIA_RUNS_END_REDELIVERED"

_REFUSE = """
CREATE OR REPLACE FUNCTION test_refuse_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('test_refused_ends') <= {times} THEN
        RAISE EXCEPTION 'the database is going away (test)' USING ERRCODE = '57P03';
    END IF;
    RETURN NEW;
END $$
"""
_TRIGGER = f"""
CREATE TRIGGER test_refuse_end BEFORE UPDATE ON runs FOR EACH ROW
WHEN (NEW.status = 'COMPLETED' AND OLD.status <> 'COMPLETED' AND NEW.queue = '{QUEUE}')
EXECUTE FUNCTION test_refuse_end()
"""


@asynccontextmanager
async def first_end_refused(settings: Settings, times: int = 1) -> AsyncIterator[None]:
    """The first `times` COMPLETED updates of this queue's runs fail as an outage would; the
    trigger (a sequence counts its calls, outside any transaction) is dropped on the way out."""
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("DROP SEQUENCE IF EXISTS test_refused_ends"))
            await conn.execute(text("CREATE SEQUENCE test_refused_ends"))
            await conn.execute(text(_REFUSE.format(times=times)))
            await conn.execute(text("DROP TRIGGER IF EXISTS test_refuse_end ON runs"))
            await conn.execute(text(_TRIGGER))
            try:
                yield
            finally:
                await conn.execute(text("DROP TRIGGER IF EXISTS test_refuse_end ON runs"))
                await conn.execute(text("DROP SEQUENCE IF EXISTS test_refused_ends"))
    finally:
        await engine.dispose()


async def test_a_run_whose_end_was_not_recorded_is_finished_by_a_pickup_that_says_so(
    infra: Any, events_address: str
) -> None:
    settings = fault_settings(infra, events_address, QUEUE, AGENT_WORKERS=1)
    async with serve_agents(settings) as api, first_end_refused(settings):
        run = await create_run(api, workflow="workflows/echo", input={"message": "twice"})
        done = await wait_status(api, run.name, *FINISHED, timeout=90)
        events = await collect(api, run.name)
    assert (S.RunStatus.Name(done.status), done.error) == ("RUN_STATUS_COMPLETED", "")
    assert done.attempt == 2, "the end was refused once: the run's second pick-up ended it"
    kinds = types(events)
    # The graph ran once (attempt 1); attempt 2 found it at its end and only recorded that.
    assert kinds.count("run.completed") == 1 and kinds[-1] == "run.completed"
    assert data(events, "run.resumed") == [{"run": run.name, "attempt": 2, "reason": "redelivered"}]
    assert kinds[-3:] == ["run.resumed", "workflow.completed", "run.completed"], kinds
    assert {d["attempt"] for d in data(events, "run.node.started")} == {1}


async def test_pickups_stopped_by_an_outage_do_not_use_up_the_runs_attempts(
    infra: Any, events_address: str
) -> None:
    """QA s22: six NATS freezes under one run failed it, "gave up after 5 attempts", though a
    run never fails for an outage. A pick-up that stops for one gives its count back; only
    pick-ups a worker never came back from count toward RUN_MAX_ATTEMPTS."""
    settings = fault_settings(infra, events_address, QUEUE, AGENT_WORKERS=1, RUN_MAX_ATTEMPTS=2)
    async with serve_agents(settings) as api, first_end_refused(settings, times=4):
        run = await create_run(api, workflow="workflows/echo", input={"message": "patient"})
        done = await wait_status(api, run.name, *FINISHED, timeout=120)
    assert (S.RunStatus.Name(done.status), done.error) == ("RUN_STATUS_COMPLETED", "")
    assert done.attempt == 5, "four outages, then the pick-up that recorded the end"
