"""A run that pauses while NATS is going away still tells of its question.

The pause is stored before `run.interrupted` is published (`runstate`, as the ends are). When
that publish cannot be made — NATS stops in the instant between the two — the pick-up fails
and its job comes back once NATS does; the worker that takes it finds the run PAUSED and must
publish the question the log never got, once, or a client following the run's events (the CLI's
chat, the dashboard's inbox, the TUI) waits for a question that never comes.

The instant is arranged, not hoped for: a trigger of this test's own holds the UPDATE that
pauses the run (on an advisory lock the test holds) until NATS is stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agents_helpers import S, WorkerProcess, create_run, serve_agents, wait_status
from faults_helpers import run_uuid, worker_env
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from test_agents_queue_faults import FINISHED, fault_settings
from webhook_receiver import receiving

from amelia_common.db import create_engine
from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.eventlog import EventLog, StartAt
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

QUEUE = "AMELIA_RUNS_PAUSE_EVENT"
HERE = Path(__file__).parent  # agent_test_workflows, for the worker processes
HOLD_KEY = 731_902_114  # the advisory lock the trigger waits on while the test holds it

_HOLD_FUNCTION = f"""
CREATE OR REPLACE FUNCTION test_hold_pause() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({HOLD_KEY});
    RETURN NEW;
END $$
"""
_HOLD_TRIGGER = f"""
CREATE TRIGGER test_hold_pause BEFORE UPDATE ON runs FOR EACH ROW
WHEN (NEW.status = 'PAUSED' AND OLD.status <> 'PAUSED' AND NEW.queue = '{QUEUE}')
EXECUTE FUNCTION test_hold_pause()
"""
_WAITING = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
    "AND objid = :key AND classid = 0"
)


@asynccontextmanager
async def pause_held(settings: Settings) -> AsyncIterator[AsyncConnection]:
    """A connection holding HOLD_KEY, with the trigger that makes this queue's pauses wait on
    it; `release` it by unlocking. The trigger is dropped on the way out."""
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(_HOLD_FUNCTION))
            await conn.execute(text("DROP TRIGGER IF EXISTS test_hold_pause ON runs"))
            await conn.execute(text(_HOLD_TRIGGER))
            await conn.execute(text(f"SELECT pg_advisory_lock({HOLD_KEY})"))
            try:
                yield conn
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock_all()"))
                await conn.execute(text("DROP TRIGGER IF EXISTS test_hold_pause ON runs"))
    finally:
        await engine.dispose()


async def wait_for_held_pause(conn: AsyncConnection, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (await conn.execute(_WAITING, {"key": HOLD_KEY})).scalar():
        assert time.monotonic() < deadline, "the run never reached its pause"
        await asyncio.sleep(0.05)


async def questions_in_log(settings: Settings, run: str) -> list[str]:
    """The ids of the run's `run.interrupted` events in the log, in order."""
    nc = await connect_nats(settings, "test-pause-events")
    try:
        log = EventLog(nc, settings, source="test")
        async with log.read(["run.interrupted"], run, StartAt.after(0), follow=False) as reader:
            return [event.id async for event in reader]
    finally:
        await nc.drain()


async def wait_for_questions(settings: Settings, run: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while not (found := await questions_in_log(settings, run)):
        if time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)
    return found


async def test_a_question_lost_with_its_worker_in_a_nats_outage_is_told_once_nats_is_back(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    settings = fault_settings(infra, events_address, QUEUE, NATS_URL=nats.start())
    # The worker waits long for NATS: it is killed with the question still unsent.
    env = {**worker_env(QUEUE), "EVENTS_PUBLISH_TIMEOUT_SECONDS": "60"}
    first = WorkerProcess(settings, tmp_path / "worker1.log", env, [HERE])
    second: WorkerProcess | None = None
    try:
        async with (
            serve_agents(settings) as api,
            pause_held(settings) as held,
            receiving() as receiver,
        ):
            await first.ready()
            run = await create_run(
                api,
                workflow="workflows/test-ask",
                input={"question": "Go?"},
                webhook=receiver.url,
            )
            await wait_for_held_pause(held)
            # The graph stopped at its question; its pause waits in PostgreSQL. NATS goes,
            # the pause is stored, and the worker dies before it could tell of it.
            await asyncio.to_thread(nats.stop)
            await held.execute(text(f"SELECT pg_advisory_unlock({HOLD_KEY})"))
            paused = await wait_status(api, run.name, S.RUN_STATUS_PAUSED, timeout=60)
            first.kill()
            await asyncio.to_thread(nats.start)
            second = WorkerProcess(settings, tmp_path / "worker2.log", env, [HERE])
            await second.ready()
            questions = await wait_for_questions(settings, run.name)
            assert len(questions) == 1, (
                f"{run.name} is PAUSED; its questions in the log: {questions}"
            )
            assert questions[0].startswith(f"{run_uuid(run.name)}:interrupt:")
            # Its webhook hears of the pause too, once the question is in the log.
            (hook,) = await receiver.wait_for(1)
            assert hook.headers["x-amelia-delivery"] == questions[0]
            assert hook.body["status"] == "RUN_STATUS_PAUSED"
            # The question is answered as any other, and stays told once.
            request = S.ResumeRunRequest(name=run.name)
            request.answer.string_value = "yes"
            await api.ResumeRun(request, timeout=60)
            done = await wait_status(api, run.name, *FINISHED, timeout=90)
            assert await questions_in_log(settings, run.name) == questions
    finally:
        for worker in (first, second):
            if worker is not None:
                await worker.stop()
        await asyncio.to_thread(nats.stop)
    assert paused.interrupt.node == "ask"
    assert S.RunStatus.Name(done.status) == "RUN_STATUS_COMPLETED"
    assert done.output["result"] == "answer was yes"
