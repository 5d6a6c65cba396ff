"""Crons: a tick fires a run that completes, once, whatever the schedulers do.

The schedulers here run in the test process on the session's real PostgreSQL and NATS, creating
runs through AgentService's CreateRun code; the shared agents service's workers run them. Their
clock is arranged: crons are created at an instant in 2031 (the service's own scheduler, on the
real clock, never finds them due) and a pass is made at the instants a test needs, so nothing
waits for a minute to pass.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from agents_helpers import S, create_run, migrate_agents_to, rpc_error, wait_status
from sqlalchemy import text
from test_agents_multitask import LONG, SLOW, first_token, started_after_end
from webhook_receiver import receiving

from amelia.v1 import agents_pb2_grpc, crons_pb2
from amelia_agents import crons
from amelia_agents.crons_scheduler import CronScheduler, tick_request_id
from amelia_agents.crons_servicer import CronServicer
from amelia_agents.resources import Resources, open_resources
from amelia_agents.servicer import AgentServicer
from amelia_agents.streaming import RunStreamer
from amelia_common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from amelia_common.settings import Settings

START = datetime(2031, 1, 6, 0, 0, 30, tzinfo=UTC)  # a Monday, mid-minute
C = crons_pb2


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Crons:
    """A CronServicer and schedulers of the test's own, on one arranged clock."""

    res: Resources
    agents: AgentServicer
    stub: agents_pb2_grpc.AgentServiceStub
    clock: Clock = field(default_factory=Clock)
    made: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api = CronServicer(
            crons.CronStore(self.res.store.sessions),
            self.agents,
            crons.creating_runs(self.agents),
            self.res.eventlog,
            clock=self.clock,
        )

    def scheduler(self, **options: Any) -> CronScheduler:
        made = crons.scheduler(self.res, self.agents, clock=self.clock)
        for key, value in options.items():
            setattr(made, key, value)
        return made

    async def create(self, **fields: Any) -> C.Cron:
        if "agent" in fields:
            fields.setdefault("input", {"message": "tick"})
        message = C.Cron()
        for key, value in fields.items():
            if key in ("input", "metadata"):
                getattr(message, key).update(value)
            elif key == "end_time":
                message.end_time.FromDatetime(value)
            else:
                setattr(message, key, value)
        made = (await self.api.CreateCron(C.CreateCronRequest(cron=message), None)).cron
        self.made.append(made.name)
        return made

    async def get(self, name: str) -> C.Cron:
        return (await self.api.GetCron(C.GetCronRequest(name=name), None)).cron

    async def agent(self) -> str:
        agent_id = f"cron-{uuid.uuid4().hex[:10]}"
        await self.stub.CreateAgent(
            S.CreateAgentRequest(agent_id=agent_id, agent=S.Agent(model="offline:echo"))
        )
        return f"agents/{agent_id}"

    async def runs_of(self, agent: str) -> list[S.Run]:
        return list((await self.stub.ListRuns(S.ListRunsRequest(agent=agent))).runs)


@pytest.fixture(scope="module")
async def cron_env(
    agents_settings: Settings, agents: agents_pb2_grpc.AgentServiceStub
) -> AsyncIterator[tuple[Resources, AgentServicer]]:
    res = await open_resources(agents_settings, "amelia-agents-cron-test")
    async with res.engine.begin() as conn:  # crons other modules left would be due in 2031
        await conn.execute(text("DELETE FROM crons"))
    streamer = RunStreamer(agents_settings, res.store, res.eventlog)
    servicer = AgentServicer(
        agents_settings, res.store, res.events, res.nc, res.js, res.checkpointer, streamer
    )
    yield res, servicer
    await streamer.close()
    await res.close()


@pytest.fixture
async def env(
    cron_env: tuple[Resources, AgentServicer], agents: agents_pb2_grpc.AgentServiceStub
) -> AsyncIterator[Crons]:
    """The test's crons, removed after it: another test's clock would find them due."""
    made = Crons(*cron_env, agents)
    yield made
    for name in made.made:
        await made.api.DeleteCron(C.DeleteCronRequest(name=name), None)


def at(minutes: float) -> datetime:
    return START + timedelta(minutes=minutes)


async def paused_run(env: Crons) -> S.Run:
    """A run PAUSED on a question: its thread stays busy until it is answered or cancelled."""
    busy = await create_run(env.stub, workflow="workflows/test-ask", input={"question": "?"})
    return await wait_status(env.stub, busy.name, S.RUN_STATUS_PAUSED)


async def test_a_cron_fires_a_run_that_completes(env: Crons) -> None:
    agent = await env.agent()
    cron = await env.create(agent=agent, schedule="*/5 * * * *", input={"message": "tick"})
    assert cron.next_run_time.ToDatetime(tzinfo=UTC) == at(4.5)  # 00:05
    scheduler = env.scheduler()

    env.clock.now = at(4)  # not due yet
    assert await scheduler.run_once() == []
    env.clock.now = at(4.6)
    [action] = await scheduler.run_once()
    assert action.outcome == "FIRED"
    assert action.missed_ticks == 0
    run = await wait_status(env.stub, action.run, S.RUN_STATUS_COMPLETED)
    assert run.agent == agent
    assert dict(run.input) == {"message": "tick"}
    shown = await env.get(cron.name)
    assert shown.last_run.run == run.name
    assert shown.last_run.schedule_time.ToDatetime(tzinfo=UTC) == at(4.5)
    assert shown.fired_count == 1
    assert shown.next_run_time.ToDatetime(tzinfo=UTC) == at(9.5)  # 00:10
    assert [a.outcome for a in shown.recent_actions] == [C.CRON_OUTCOME_FIRED]
    assert await scheduler.run_once() == []  # the tick fired once
    assert [r.name for r in await env.runs_of(agent)] == [run.name]


async def test_a_timezone_reads_the_schedule_on_its_wall_clock(env: Crons) -> None:
    cron = await env.create(
        agent=await env.agent(), schedule="0 9 * * *", timezone="America/New_York"
    )
    # 09:00 in New York in January is 14:00 UTC.
    assert cron.next_run_time.ToDatetime(tzinfo=UTC) == START.replace(hour=14, second=0)


async def test_two_schedulers_racing_on_a_due_cron_create_one_run(env: Crons) -> None:
    agent = await env.agent()
    cron = await env.create(agent=agent, schedule="* * * * *")
    first, second = env.scheduler(), env.scheduler()
    fired: list[str] = []
    for tick in range(1, 11):  # ten ticks, each raced by both
        env.clock.now = at(tick)
        done = await asyncio.gather(first.run_once(), second.run_once())
        outcomes = [a.run for found in done for a in found]
        assert len(outcomes) == 1, f"tick {tick}: {outcomes}"
        fired += outcomes
        await wait_status(env.stub, outcomes[0], S.RUN_STATUS_COMPLETED)
    runs = await env.runs_of(agent)
    assert sorted(r.name for r in runs) == sorted(fired)
    assert (await env.get(cron.name)).fired_count == 10


class KilledError(BaseException):
    """The scheduler's process dying (not an error it could handle)."""


async def test_a_scheduler_killed_between_claim_and_run_loses_no_tick(env: Crons) -> None:
    agent = await env.agent()
    cron = await env.create(agent=agent, schedule="*/5 * * * *")
    entered = asyncio.Event()

    async def hang(_request: Any) -> S.Run:
        entered.set()
        await asyncio.Event().wait()  # until the task is cancelled: the process died here
        raise AssertionError("unreachable")

    env.clock.now = at(5)
    dying = asyncio.create_task(env.scheduler(start_run=hang).run_once())
    await entered.wait()
    dying.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dying
    assert await env.runs_of(agent) == []
    survivor = env.scheduler()
    env.clock.now = at(5.5)  # within the lease: the claimer may still be at it
    assert await survivor.run_once() == []
    env.clock.now = at(6.1)  # the lease (60 s) has passed
    [action] = await survivor.run_once()
    assert action.outcome == "FIRED"
    assert action.schedule_time == at(4.5)
    [run] = await env.runs_of(agent)
    assert run.name == action.run
    await wait_status(env.stub, run.name, S.RUN_STATUS_COMPLETED)
    shown = await env.get(cron.name)
    assert (shown.fired_count, shown.last_run.run) == (1, run.name)
    assert shown.next_run_time.ToDatetime(tzinfo=UTC) == at(9.5)


async def test_a_scheduler_killed_after_creating_the_run_does_not_run_the_tick_twice(
    env: Crons,
) -> None:
    agent = await env.agent()
    cron = await env.create(agent=agent, schedule="*/5 * * * *")
    start_run = crons.creating_runs(env.agents)

    async def create_then_die(request: Any) -> S.Run:
        await start_run(request)
        raise KilledError

    env.clock.now = at(5)
    with pytest.raises(KilledError):
        await env.scheduler(start_run=create_then_die).run_once()
    [made] = await env.runs_of(agent)
    env.clock.now = at(6.1)
    [action] = await env.scheduler().run_once()
    assert action.run == made.name  # the request id found the run made before the crash
    assert [r.name for r in await env.runs_of(agent)] == [made.name]
    tick = action.schedule_time
    assert (await env.agents.store.run_by_request_id(tick_request_id(_id(cron), tick))) is not None
    assert (await env.get(cron.name)).fired_count == 1


def _id(cron: C.Cron) -> uuid.UUID:
    return uuid.UUID(cron.name.removeprefix("crons/"))


async def test_paused_crons_do_not_fire_and_resume_from_now(env: Crons) -> None:
    agent = await env.agent()
    paused = await env.create(agent=agent, schedule="* * * * *", paused=True)
    assert not paused.HasField("next_run_time")
    cron = await env.create(agent=agent, schedule="*/5 * * * *")
    change = C.Cron(name=cron.name, paused=True)
    request = C.UpdateCronRequest(cron=change, update_mask=["paused"])
    assert not (await env.api.UpdateCron(request, None)).cron.HasField("next_run_time")
    scheduler = env.scheduler()
    env.clock.now = at(30)
    assert await scheduler.run_once() == []
    assert await env.runs_of(agent) == []
    change.paused = False
    resumed = (
        await env.api.UpdateCron(C.UpdateCronRequest(cron=change, update_mask=["paused"]), None)
    ).cron
    # The ticks missed while paused do not fire: the next one is after the unpause.
    assert resumed.next_run_time.ToDatetime(tzinfo=UTC) == at(34.5)
    assert await scheduler.run_once() == []
    env.clock.now = at(35)
    [action] = await scheduler.run_once()
    assert action.outcome == "FIRED"
    [run] = await env.runs_of(agent)
    assert run.name == action.run
    await wait_status(env.stub, run.name, S.RUN_STATUS_COMPLETED)


async def test_a_tick_whose_thread_is_busy_is_skipped_and_shown(env: Crons) -> None:
    busy = await create_run(env.stub, workflow="workflows/test-ask", input={"question": "?"})
    await wait_status(env.stub, busy.name, S.RUN_STATUS_PAUSED)
    cron = await env.create(
        workflow="workflows/test-ask", thread=busy.thread, schedule="*/5 * * * *"
    )
    scheduler = env.scheduler()
    env.clock.now = at(5)
    [action] = await scheduler.run_once()
    assert action.outcome == "SKIPPED"
    # The busy run with its status, and the cron's own way to run on a busy thread.
    assert f"already has an active run, {busy.name} (PAUSED)" in action.reason
    assert "set the cron's multitask_strategy (enqueue, interrupt, rollback)" in action.reason
    assert "create the run" not in action.reason
    shown = await env.get(cron.name)
    assert (shown.skipped_count, shown.fired_count) == (1, 0)
    assert shown.recent_actions[0].outcome == C.CRON_OUTCOME_SKIPPED
    assert not shown.HasField("last_run")
    await env.stub.CancelRun(S.CancelRunRequest(name=busy.name))
    env.clock.now = at(10)
    [action] = await scheduler.run_once()
    assert action.outcome == "FIRED"
    run = await wait_status(env.stub, action.run, S.RUN_STATUS_PAUSED)
    assert run.thread == busy.thread
    await env.stub.CancelRun(S.CancelRunRequest(name=run.name))


async def test_enqueue_on_a_busy_thread_queues_the_run_which_runs_once_the_thread_is_free(
    env: Crons,
) -> None:
    busy = await paused_run(env)
    cron = await env.create(
        workflow="workflows/test-ask",
        thread=busy.thread,
        schedule="*/5 * * * *",
        input={"question": "from the cron?"},
        multitask_strategy="enqueue",
    )
    assert cron.multitask_strategy == "enqueue"
    env.clock.now = at(5)
    [action] = await env.scheduler().run_once()
    assert (action.outcome, action.reason) == ("FIRED", f"queued behind {busy.name}")
    waiting = (await env.stub.GetRun(S.GetRunRequest(name=action.run))).run
    assert (waiting.status, waiting.queued_behind) == (S.RUN_STATUS_QUEUED, busy.name)
    shown = await env.get(cron.name)
    assert (shown.fired_count, shown.skipped_count) == (1, 0)
    assert shown.recent_actions[0].reason == f"queued behind {busy.name}"
    await env.stub.CancelRun(S.CancelRunRequest(name=busy.name))
    ran = await wait_status(env.stub, action.run, S.RUN_STATUS_PAUSED)  # it ran to its question
    assert "from the cron?" in str(ran.interrupt.value)
    ended = await wait_status(env.stub, busy.name, S.RUN_STATUS_CANCELLED)
    assert started_after_end(ended, ran)
    await env.stub.CancelRun(S.CancelRunRequest(name=ran.name))
    await wait_status(env.stub, ran.name, S.RUN_STATUS_CANCELLED)
    env.clock.now = at(10)  # the thread is free: the run starts, nothing is said of a wait
    [action] = await env.scheduler().run_once()
    assert (action.outcome, action.reason) == ("FIRED", "")
    free = await wait_status(env.stub, action.run, S.RUN_STATUS_PAUSED)
    await env.stub.CancelRun(S.CancelRunRequest(name=free.name))


async def test_interrupt_on_a_busy_thread_cancels_the_running_run_and_runs_the_crons(
    env: Crons,
) -> None:
    busy = await create_run(
        env.stub, workflow="workflows/chat", input={"message": LONG, "model": SLOW}
    )
    await first_token(env.stub, busy.name)
    cron = await env.create(
        workflow="workflows/chat",
        thread=busy.thread,
        schedule="*/5 * * * *",
        input={"message": "tick", "model": "offline:echo"},
        multitask_strategy="interrupt",
    )
    env.clock.now = at(5)
    [action] = await env.scheduler().run_once()
    assert (action.outcome, action.reason) == ("FIRED", f"interrupted {busy.name}")
    stopped = await wait_status(env.stub, busy.name, S.RUN_STATUS_CANCELLED)
    assert stopped.error == f"interrupted by {action.run} (multitask_strategy interrupt)"
    done = await wait_status(env.stub, action.run, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == "tick"
    assert started_after_end(stopped, done)
    assert (await env.get(cron.name)).last_run.run == done.name


async def test_rollback_on_a_busy_thread_deletes_the_stopped_run(env: Crons) -> None:
    busy = await paused_run(env)
    await env.create(
        workflow="workflows/test-ask",
        thread=busy.thread,
        schedule="*/5 * * * *",
        input={"question": "again?"},
        multitask_strategy="rollback",
    )
    env.clock.now = at(5)
    [action] = await env.scheduler().run_once()
    assert (action.outcome, action.reason) == ("FIRED", f"rolled back {busy.name}")
    ran = await wait_status(env.stub, action.run, S.RUN_STATUS_PAUSED)
    assert ran.thread == busy.thread
    gone = await rpc_error(env.stub.GetRun(S.GetRunRequest(name=busy.name)))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    await env.stub.CancelRun(S.CancelRunRequest(name=ran.name))


async def test_after_downtime_a_cron_fires_once_for_its_missed_ticks(env: Crons) -> None:
    agent = await env.agent()
    cron = await env.create(agent=agent, schedule="*/5 * * * *")
    scheduler = env.scheduler()
    env.clock.now = at(24 * 60 + 7)  # down for a day: 00:05 … 00:00 missed, 00:05 fires
    [action] = await scheduler.run_once()
    assert (action.outcome, action.missed_ticks) == ("FIRED", 24 * 12)
    assert action.schedule_time == at(24 * 60 + 4.5)  # the latest missed tick fires
    assert await scheduler.run_once() == []
    shown = await env.get(cron.name)
    assert shown.next_run_time.ToDatetime(tzinfo=UTC) == at(24 * 60 + 9.5)
    assert shown.last_run.missed_ticks == 24 * 12
    [run] = await env.runs_of(agent)
    await wait_status(env.stub, run.name, S.RUN_STATUS_COMPLETED)


async def test_a_cron_whose_agent_was_deleted_records_failed_ticks(env: Crons) -> None:
    agent = await env.agent()
    cron = await env.create(agent=agent, schedule="*/5 * * * *")
    await env.stub.DeleteAgent(S.DeleteAgentRequest(name=agent))
    scheduler = env.scheduler()
    for tick in (5, 10):
        env.clock.now = at(tick)
        [action] = await scheduler.run_once()
        assert action.outcome == "FAILED"
        assert f"{agent} does not exist" in action.reason
    shown = await env.get(cron.name)
    assert (shown.failed_count, shown.fired_count) == (2, 0)
    assert shown.next_run_time.ToDatetime(tzinfo=UTC) == at(14.5)


async def test_an_end_time_stops_the_schedule(env: Crons) -> None:
    agent = await env.agent()
    cron = await env.create(agent=agent, schedule="*/5 * * * *", end_time=at(12))
    scheduler = env.scheduler()
    env.clock.now = at(60)  # 00:05 and 00:10 were before the end, 00:15 is not
    [action] = await scheduler.run_once()
    assert (action.schedule_time, action.missed_ticks) == (at(9.5), 1)
    assert not (await env.get(cron.name)).HasField("next_run_time")
    [run] = await env.runs_of(agent)
    await wait_status(env.stub, run.name, S.RUN_STATUS_COMPLETED)


async def test_no_tick_fires_after_the_end_even_with_two_schedulers_racing(env: Crons) -> None:
    agent = await env.agent()
    cron = await env.create(agent=agent, schedule="* * * * *", end_time=at(2.25))  # 00:02:45
    assert not cron.ended
    first, second = env.scheduler(), env.scheduler()
    fired: list[str] = []
    for minute in range(1, 6):  # 00:01:30 … 00:05:30: the ticks 00:01 and 00:02 are before it
        env.clock.now = at(minute)
        done = await asyncio.gather(first.run_once(), second.run_once())
        fired += [a.run for found in done for a in found]
    assert len(fired) == 2, fired
    assert sorted(r.name for r in await env.runs_of(agent)) == sorted(fired)
    shown = await env.get(cron.name)
    assert shown.ended and not shown.HasField("next_run_time")
    assert shown.fired_count == 2 and shown.end_time.ToDatetime(tzinfo=UTC) == at(2.25)
    listed = await env.api.ListCrons(C.ListCronsRequest(agent=agent), None)
    assert [c.ended for c in listed.crons] == [True]  # shown as ended, not deleted
    for name in fired:
        await wait_status(env.stub, name, S.RUN_STATUS_COMPLETED)


async def test_an_end_set_while_a_scheduler_claims_is_kept(env: Crons) -> None:
    """An UpdateCron committed between a scheduler's read of the due crons and its claim (the
    update's clock a moment behind the scheduler's): the claim made from the old row is refused,
    the next pass reads the new end, and no tick after it fires."""
    agent = await env.agent()
    cron = await env.create(agent=agent, schedule="*/5 * * * *")  # next 00:05
    scheduler = env.scheduler()
    due = scheduler.crons.due

    async def due_then_update(moment: datetime, limit: int) -> list[Any]:
        found = await due(moment, limit)
        env.clock.now = at(4.4)  # 00:04:54: the next tick is still 00:05, before the end
        change = C.Cron(name=cron.name)
        change.end_time.FromDatetime(at(7))  # 00:07:30
        request = C.UpdateCronRequest(cron=change, update_mask=["end_time"])
        updated = (await env.api.UpdateCron(request, None)).cron
        assert updated.next_run_time.ToDatetime(tzinfo=UTC) == at(4.5)
        env.clock.now = at(5)
        return found

    scheduler.crons.due = due_then_update  # type: ignore[method-assign]
    env.clock.now = at(5)
    assert await scheduler.run_once() == []  # read before the change: not claimed
    scheduler.crons.due = due  # type: ignore[method-assign]
    env.clock.now = at(5.1)
    [action] = await scheduler.run_once()
    assert action.schedule_time == at(4.5)
    shown = await env.get(cron.name)
    assert shown.ended and not shown.HasField("next_run_time")  # 00:10 is after the end
    env.clock.now = at(10)
    assert await scheduler.run_once() == []
    [run] = await env.runs_of(agent)
    await wait_status(env.stub, run.name, S.RUN_STATUS_COMPLETED)


async def test_a_paused_cron_past_its_end_shows_as_ended(env: Crons) -> None:
    cron = await env.create(agent=await env.agent(), schedule="* * * * *", end_time=at(3))
    change = C.Cron(name=cron.name, paused=True)
    await env.api.UpdateCron(C.UpdateCronRequest(cron=change, update_mask=["paused"]), None)
    assert not (await env.get(cron.name)).ended
    env.clock.now = at(2.6)  # its last tick (03:00) is past, its end (03:30) not yet: no tick left
    shown = await env.get(cron.name)
    assert shown.paused and shown.ended
    env.clock.now = at(4)
    shown = await env.get(cron.name)
    assert shown.paused and shown.ended


async def test_trigger_runs_now_even_paused(env: Crons) -> None:
    agent = await env.agent()
    cron = await env.create(agent=agent, schedule="0 0 1 1 *", paused=True)
    request = C.TriggerCronRequest(name=cron.name, request_id="manual-1")
    first = await env.api.TriggerCron(request, None)
    again = await env.api.TriggerCron(request, None)  # a retry: the same run, recorded once
    assert again.run.name == first.run.name
    assert again.cron.fired_count == 1
    assert again.cron.last_run.triggered
    await wait_status(env.stub, first.run.name, S.RUN_STATUS_COMPLETED)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"schedule": "* * * *"}, "cron.schedule '* * * *' must have 5 fields"),
        ({"schedule": "61 * * * *"}, "cron.schedule '61 * * * *' is not a valid cron expression"),
        ({"schedule": "0 0 30 2 *"}, "never fires"),
        # Plain cron only: croniter's extensions are refused in words, not its internals.
        ({"schedule": "H * * * *"}, "the minute field's 'H' is not a number in 0-59"),
        ({"schedule": "* * ? * *"}, "the day-of-month field's '?' is not plain cron"),
        ({"schedule": "0 0 L 2 *"}, "the day-of-month field's 'L' is not a number in 1-31"),
        ({"schedule": "1-31/40 * * * *"}, "the minute field's step in '1-31/40' is not in 1-30"),
        ({"schedule": "0 0 * * 5-1"}, "the day-of-week field's range '5-1' runs backwards"),
        ({"schedule": "* * * * *", "timezone": "Mars/Base"}, "cron.timezone 'Mars/Base'"),
        # A name longer than the disk takes (OSError in zoneinfo: it was INTERNAL).
        (
            {"schedule": "* * * * *", "timezone": "A" * 300},
            "cron.timezone 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'… (300 characters) is not an "
            "IANA time zone",
        ),
        ({"schedule": "* * * * *", "timezone": "Europe/" + "x" * 250}, "is not an IANA time zone"),
        (
            {"schedule": "1," * 5000 + "2 * * * *"},
            "characters) is longer than 256 characters: use ranges and steps",
        ),
        ({"schedule": "* * * * *"}, "set cron.agent"),
        (
            {"schedule": "* * * * *", "agent": "agents/{agent}", "input": {"x": 1}},
            "cron.input: input.message is required",
        ),
        (
            {"schedule": "* * * * *", "agent": "agents/{agent}", "multitask_strategy": "queue"},
            "cron.multitask_strategy 'queue' is not one of: reject, enqueue, interrupt, rollback",
        ),
        (
            {"schedule": "* * * * *", "agent": "agents/{agent}", "multitask_strategy": "x" * 5000},
            "is not one of: reject, enqueue, interrupt, rollback",
        ),
        (
            {"schedule": "* * * * *", "agent": "agents/{agent}", "end_time": at(-1)},
            "cron.end_time 2031-01-05T23:59:30Z must be in the future (it is 2031-01-06T00:00:30Z)",
        ),
        (
            {"schedule": "0 * * * *", "agent": "agents/{agent}", "end_time": at(20)},
            "cron.end_time 2031-01-06T00:20:30Z is not after the schedule's next tick "
            "(2031-01-06T01:00:00Z): no run would start",
        ),
        (
            {"schedule": "* * * * *", "agent": "agents/{agent}", "end_time": at(0.5)},
            "is not after the schedule's next tick (2031-01-06T00:01:00Z)",
        ),
    ],
)
async def test_bad_crons_are_refused_naming_the_field(
    env: Crons, fields: dict[str, Any], words: str
) -> None:
    if fields.get("agent"):
        fields["agent"] = await env.agent()
    with pytest.raises(InvalidArgumentError) as caught:
        await env.create(**fields)
    assert words in caught.value.message


async def test_missing_agents_and_threads_are_not_found(env: Crons) -> None:
    with pytest.raises(NotFoundError, match="agents/nobody-here does not exist"):
        await env.create(agent="agents/nobody-here", schedule="* * * * *")
    thread = f"threads/{uuid.uuid4()}"
    with pytest.raises(NotFoundError, match=thread):
        await env.create(agent=await env.agent(), thread=thread, schedule="* * * * *")


async def test_trigger_on_a_busy_thread_is_refused(env: Crons) -> None:
    busy = await create_run(env.stub, workflow="workflows/test-ask", input={"question": "?"})
    await wait_status(env.stub, busy.name, S.RUN_STATUS_PAUSED)
    cron = await env.create(workflow="workflows/test-ask", thread=busy.thread, schedule="0 0 1 1 *")
    with pytest.raises(FailedPreconditionError) as caught:
        await env.api.TriggerCron(C.TriggerCronRequest(name=cron.name), None)
    assert f"already has an active run, {busy.name} (PAUSED)" in caught.value.message
    assert "set the cron's multitask_strategy" in caught.value.message
    await env.stub.CancelRun(S.CancelRunRequest(name=busy.name))


async def test_update_reschedules_and_refuses_a_bad_schedule(env: Crons) -> None:
    cron = await env.create(agent=await env.agent(), schedule="*/5 * * * *")
    change = C.Cron(name=cron.name, schedule="0 * * * *", timezone="Asia/Kolkata")
    request = C.UpdateCronRequest(cron=change, update_mask=["schedule,timezone"])
    updated = (await env.api.UpdateCron(request, None)).cron
    # Minute 0 in Kolkata (UTC+05:30) is minute 30 in UTC.
    assert updated.next_run_time.ToDatetime(tzinfo=UTC) == at(29.5)
    assert (updated.schedule, updated.timezone) == ("0 * * * *", "Asia/Kolkata")
    change.schedule = "0 * * *"
    with pytest.raises(InvalidArgumentError, match=r"cron.schedule '0 \* \* \*' must have 5"):
        await env.api.UpdateCron(C.UpdateCronRequest(cron=change, update_mask=["schedule"]), None)
    change.schedule, change.timezone = "0 * * * *", "B" * 300
    with pytest.raises(InvalidArgumentError, match="is not an IANA time zone"):
        await env.api.UpdateCron(C.UpdateCronRequest(cron=change, update_mask=["timezone"]), None)
    with pytest.raises(InvalidArgumentError, match="update_mask has unknown fields"):
        await env.api.UpdateCron(C.UpdateCronRequest(cron=change, update_mask=["agent"]), None)
    assert (await env.get(cron.name)).schedule == "0 * * * *"  # nothing changed


async def test_update_changes_the_strategy_and_refuses_a_bad_one_or_a_past_end(env: Crons) -> None:
    agent = await env.agent()
    cron = await env.create(agent=agent, schedule="*/5 * * * *")
    assert cron.multitask_strategy == "reject" and not cron.ended
    # Without a thread each tick's thread is new, never busy: a strategy is refused, as
    # LangGraph Server's stateless crons have none (reject, the default, is what it has).
    never_busy = "'enqueue' needs a cron on a thread: without cron.thread each tick runs on a new"
    change = C.Cron(name=cron.name, multitask_strategy="enqueue")
    with pytest.raises(InvalidArgumentError, match=never_busy):
        await env.api.UpdateCron(C.UpdateCronRequest(cron=change), None)
    with pytest.raises(InvalidArgumentError, match=never_busy):
        await env.create(agent=agent, schedule="* * * * *", multitask_strategy="enqueue")
    change.multitask_strategy = "reject"
    assert (await env.api.UpdateCron(C.UpdateCronRequest(cron=change), None)).cron.name
    thread = (await env.stub.CreateThread(S.CreateThreadRequest())).thread.name
    threaded = await env.create(agent=agent, thread=thread, schedule="*/5 * * * *")
    change = C.Cron(name=threaded.name, multitask_strategy="ENQUEUE")
    updated = (await env.api.UpdateCron(C.UpdateCronRequest(cron=change), None)).cron
    assert updated.multitask_strategy == "enqueue"
    for strategy in ("skip", " "):
        change.multitask_strategy = strategy
        request = C.UpdateCronRequest(cron=change, update_mask=["multitask_strategy"])
        if strategy == " ":  # blank: the default again
            assert (await env.api.UpdateCron(request, None)).cron.multitask_strategy == "reject"
            continue
        with pytest.raises(InvalidArgumentError, match="'skip' is not one of: reject, enqueue"):
            await env.api.UpdateCron(request, None)
    past = C.Cron(name=cron.name)
    past.end_time.FromDatetime(at(-10))
    with pytest.raises(InvalidArgumentError, match=r"cron.end_time .* must be in the future"):
        await env.api.UpdateCron(C.UpdateCronRequest(cron=past, update_mask=["end_time"]), None)
    past.end_time.FromDatetime(at(2))  # before 00:05
    with pytest.raises(InvalidArgumentError, match="not after the schedule's next tick"):
        await env.api.UpdateCron(C.UpdateCronRequest(cron=past, update_mask=["end_time"]), None)
    shown = await env.get(cron.name)
    assert not shown.HasField("end_time") and shown.next_run_time.ToDatetime(tzinfo=UTC) == at(4.5)


async def test_crons_are_listed_in_pages_by_agent(env: Crons) -> None:
    agent = await env.agent()
    made = []
    for minute in range(3):  # oldest first
        env.clock.now = at(minute)
        made.append((await env.create(agent=agent, schedule=f"{minute} * * * *")).name)
    first = await env.api.ListCrons(C.ListCronsRequest(agent=agent, page_size=2), None)
    assert [c.name for c in first.crons] == made[:2] and first.next_page_token
    rest = await env.api.ListCrons(
        C.ListCronsRequest(agent=agent, page_size=2, page_token=first.next_page_token), None
    )
    assert [c.name for c in rest.crons] == made[2:] and not rest.next_page_token
    with pytest.raises(InvalidArgumentError, match="page_token"):
        await env.api.ListCrons(C.ListCronsRequest(page_token=first.next_page_token), None)


async def test_migration_0006_downgrades_and_upgrades_again(infra: Any) -> None:
    """agents_0006 on a database with a cron: existing crons get "reject"; the downgrade drops
    the column and keeps the cron, the upgrade brings the column back."""
    from amelia_agents.resources import migrate
    from amelia_common.db import create_engine

    async with infra.scratch_database("cron_migration") as url:
        engine = create_engine(infra.settings(), url)
        try:
            await migrate(engine)
            column = text(
                "SELECT count(*) FROM information_schema.columns "
                "WHERE table_name = 'crons' AND column_name = 'multitask_strategy'"
            )
            async with engine.begin() as conn:
                await conn.run_sync(migrate_agents_to("agents_0005"))
                assert (await conn.execute(column)).scalar() == 0
                await conn.execute(
                    text(
                        "INSERT INTO crons (id, schedule, workflow) VALUES (:id, '* * * * *', 'chat')"
                    ),
                    {"id": uuid.uuid4()},
                )
                await conn.run_sync(migrate_agents_to("head"))
                assert (await conn.execute(column)).scalar() == 1
                found = await conn.execute(text("SELECT multitask_strategy FROM crons"))
                assert [row[0] for row in found] == ["reject"]
        finally:
            await engine.dispose()


async def test_each_run_a_cron_makes_is_posted_to_the_crons_webhook(env: Crons) -> None:
    """A cron's webhook (LangGraph's cron `webhook`) goes on every run it makes: a tick's and
    a trigger's; a changed one applies from the next run on, a cleared one stops."""
    agent = await env.agent()
    scheduler = env.scheduler()
    async with receiving() as first, receiving() as second:
        cron = await env.create(agent=agent, schedule="*/5 * * * *", webhook=first.url)
        assert cron.webhook == first.url
        env.clock.now = at(4.6)
        [tick] = await scheduler.run_once()
        triggered = (await env.api.TriggerCron(C.TriggerCronRequest(name=cron.name), None)).run
        hooks = await first.wait_for(2)
        assert {h.body["name"] for h in hooks} == {tick.run, triggered.name}
        assert all(h.body["status"] == "RUN_STATUS_COMPLETED" for h in hooks)
        assert all(h.body["webhook"] == first.url for h in hooks)

        changed = C.Cron(name=cron.name, webhook=second.url)
        update = C.UpdateCronRequest(cron=changed, update_mask=["webhook"])
        assert (await env.api.UpdateCron(update, None)).cron.webhook == second.url
        env.clock.now = at(9.6)
        [later] = await scheduler.run_once()
        (hook,) = await second.wait_for(1)
        assert hook.body["name"] == later.run
        assert len(first.received) == 2

        cleared = C.UpdateCronRequest(cron=C.Cron(name=cron.name), update_mask=["webhook"])
        assert (await env.api.UpdateCron(cleared, None)).cron.webhook == ""
        env.clock.now = at(14.6)
        [plain] = await scheduler.run_once()
        run = await wait_status(env.stub, plain.run, S.RUN_STATUS_COMPLETED)
        assert run.webhook == ""


async def test_a_cron_webhook_that_is_not_an_http_url_is_refused(env: Crons) -> None:
    agent = await env.agent()
    with pytest.raises(InvalidArgumentError, match=r"^cron.webhook must be an http or https"):
        await env.create(agent=agent, schedule="*/5 * * * *", webhook="file:///etc/passwd")
    cron = await env.create(agent=agent, schedule="*/5 * * * *")
    bad = C.UpdateCronRequest(
        cron=C.Cron(name=cron.name, webhook="http://x:port/"), update_mask=["webhook"]
    )
    with pytest.raises(InvalidArgumentError, match=r"^cron.webhook 'http://x:port/' is not a URL"):
        await env.api.UpdateCron(bad, None)
    nul = C.UpdateCronRequest(
        cron=C.Cron(name=cron.name, webhook="http://x/\x00"), update_mask=["webhook"]
    )
    with pytest.raises(InvalidArgumentError, match=r"^cron.webhook must not contain NUL"):
        await env.api.UpdateCron(nul, None)
    assert (await env.get(cron.name)).webhook == ""
