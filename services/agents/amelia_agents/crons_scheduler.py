"""The cron scheduler: every agents replica runs one; each tick of a cron fires at most once.

A pass (every CRON_POLL_SECONDS) first retakes ticks left pending longer than the lease (their
scheduler died, or the run could not be created for a while), then claims the due ones
(`CronStore.claim`: one conditional UPDATE, one winner) and fires them: a run created through
CreateRun's own code with the request id `cron:<cron id>:<tick>`, so a tick fired again after a
crash gets the run already made. Outcomes:

- FIRED: a run was created (`cron.fired`) — on a busy thread, as the cron's multitask strategy
  says: queued behind the thread's run ("enqueue"), or stopping it ("interrupt", "rollback");
- SKIPPED: the cron's thread still had a run and its strategy is "reject" (Temporal's overlap
  policy SKIP; `cron.skipped`);
- FAILED: the run was refused (the agent was deleted, the input no longer fits its workflow):
  recorded, and the cron goes on to its next tick (`cron.failed`) — never a crash loop.

A cron overdue after downtime fires once, for its latest missed tick, the others counted
(`missed_ticks`; Temporal's catch-up with a buffer of one). An outage of PostgreSQL or NATS while
firing leaves the tick pending: it is tried again once the lease has passed. The clock is
injected, so tests arrange instants instead of waiting for a minute to pass.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from amelia.v1 import agents_pb2
from amelia_agents import convert, crons_schedule
from amelia_agents.crons_store import Action, CronRow, CronStore
from amelia_agents.outages import infrastructure_outage
from amelia_agents.periodic import Periodic
from amelia_agents.store import Store
from amelia_common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from amelia_common.eventlog import EventLog, make_event
from amelia_common.logging import get_logger

log = get_logger("amelia.agents.crons")

StartRun = Callable[[agents_pb2.CreateRunRequest], Awaitable[agents_pb2.Run]]
Clock = Callable[[], datetime]

CRON_POLL_SECONDS = 2.0
# How long a claimed tick may stay pending before another scheduler fires it again.
PENDING_LEASE_SECONDS = 60.0
BATCH = 50  # crons claimed per pass at most
# What a run's creation answers when the run is refused for good (the tick FAILED).
REFUSED = (NotFoundError, InvalidArgumentError, AlreadyExistsError)


def utc_now() -> datetime:
    return datetime.now(UTC)


def tick_request_id(cron_id: uuid.UUID, tick: datetime) -> str:
    """The CreateRun request id of a cron's tick: the same on every replica and every retry."""
    return f"cron:{cron_id}:{int(tick.timestamp())}"


def run_request(row: CronRow, request_id: str) -> agents_pb2.CreateRunRequest:
    """CreateRun's request for a run of the cron, with its multitask strategy (on a busy thread
    "reject" is FAILED_PRECONDITION: the tick is skipped) and its webhook."""
    run = agents_pb2.Run(
        thread=f"threads/{row.thread_id}" if row.thread_id else "",
        multitask_strategy=row.multitask_strategy if row.thread_id else "",
        webhook=row.webhook or "",
    )
    convert.set_target(run, row.agent_id, row.workflow)
    run.input.update(row.input or {})
    run.input.SetInParent()  # present even when empty: a fresh start, not a continuation
    return agents_pb2.CreateRunRequest(run=run, request_id=request_id)


class CronScheduler:
    def __init__(
        self,
        crons: CronStore,
        runs: Store,
        start_run: StartRun,
        event_log: EventLog,
        *,
        clock: Clock = utc_now,
        poll_seconds: float = CRON_POLL_SECONDS,
        lease_seconds: float = PENDING_LEASE_SECONDS,
    ) -> None:
        self.crons = crons
        self.runs = runs
        self.start_run = start_run
        self.event_log = event_log
        self.clock = clock
        self.lease = timedelta(seconds=lease_seconds)
        self._loop = Periodic(
            "cron-scheduler",
            poll_seconds,
            self.run_once,
            log,
            "the cron scheduler cannot fire crons now",
        )

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def run_once(self) -> list[Action]:
        """One pass: fire the ticks left pending too long, then the due ones; their outcomes
        (those this scheduler recorded)."""
        moment = self.clock()
        done: list[Action] = []
        for row in await self.crons.stale(moment - self.lease, BATCH):
            taken = await self.crons.retake(row, moment)
            if taken is not None:
                log.warning("firing a cron tick left pending", cron=str(row.id))
                await self._fire(taken, done)
        for row in await self.crons.due(moment, BATCH):
            claimed = await self.claim(row, moment)
            if claimed is not None:
                await self._fire(claimed, done)
        return done

    async def claim(self, row: CronRow, moment: datetime) -> CronRow | None:
        """Claim `row`'s due tick (its latest missed one after downtime) and move it on to its
        next tick after `moment`; None when another scheduler got it first."""
        due = row.next_run_time
        assert due is not None, "due() returns crons with a next tick"
        try:
            schedule = crons_schedule.parse(row.schedule, row.timezone)
        except InvalidArgumentError:  # stored valid; a zone database without its zone now
            return await self.crons.claim(row, due, 0, None, moment)
        limit = moment if row.end_time is None else min(moment, crons_schedule.before(row.end_time))
        tick, missed = schedule.catch_up(due, max(limit, due))
        following = crons_schedule.first_tick(schedule, moment, row.end_time)
        return await self.crons.claim(row, tick, missed, following, moment)

    async def _fire(self, row: CronRow, done: list[Action]) -> None:
        tick = row.pending_tick
        assert tick is not None, "a claimed or retaken row has its tick pending"
        request_id = tick_request_id(row.id, tick)
        action = Action(tick, "FIRED", missed_ticks=row.pending_missed, action_time=self.clock())
        try:
            run = await self.start_run(run_request(row, request_id))
            action.run = run.name
            action.reason = await busy_reason(self.runs, run)
        except FailedPreconditionError as exc:
            # The thread is busy, unless that busy run is this tick's own (a racing retry).
            existing = await self.runs.run_by_request_id(request_id)
            if existing is not None:
                action.run = f"runs/{existing.id}"
            else:
                action.outcome, action.reason = "SKIPPED", exc.message
        except REFUSED as exc:
            action.outcome, action.reason = "FAILED", exc.message
        except Exception as exc:  # noqa: BLE001 - an outage: the tick stays pending
            log.warning(
                "cannot fire a cron tick now; it is tried again",
                cron=str(row.id),
                tick=tick.isoformat(),
                dependency=infrastructure_outage(exc),
                error=str(exc) or repr(exc),
            )
            return
        await tell(self.event_log, row.id, action)
        if await self.crons.record(row.id, action, pending=tick) is not None:
            done.append(action)


# What a fired action says of a run created on a busy thread, by its multitask strategy.
BUSY = {"enqueue": "queued behind", "interrupt": "interrupted", "rollback": "rolled back"}


async def busy_reason(runs: Store, run: agents_pb2.Run) -> str:
    """`queued behind runs/X` / `interrupted runs/X` / `rolled back runs/X` for a run created
    while the thread's run X was active (an interrupt or rollback stops it); empty otherwise. A
    run with a strategy is recorded behind the thread's latest run even when that one has
    ended (`multitask`), and admitted at once: the thread was free, nothing to say."""
    if not run.queued_behind:
        return ""
    behind = await runs.get_run(uuid.UUID(run.queued_behind.removeprefix("runs/")))
    created = run.create_time.ToDatetime(tzinfo=UTC)
    if behind is not None and behind.end_time is not None and behind.end_time <= created:
        return ""
    return f"{BUSY.get(run.multitask_strategy, 'queued behind')} {run.queued_behind}"


async def tell(event_log: EventLog, cron_id: uuid.UUID, action: Action) -> None:
    """`cron.fired` / `cron.skipped` / `cron.failed` on `crons/<id>`, with a fixed id (a tick
    told again after a crash is stored once). A failure is logged, not raised: the outcome is
    kept on the cron whether or not the event log takes the event."""
    name = f"crons/{cron_id}"
    kind = action.outcome.lower()
    stamp = int(action.schedule_time.timestamp())
    event_id = f"cron:{cron_id}:{'trigger:' + action.run[5:] if action.triggered else stamp}:{kind}"
    event = make_event(
        f"cron.{kind}",
        name,
        {"cron": name, **action.to_json()},
        source=event_log.source,
        event_id=event_id,
        correlation_id=action.run or name,
    )
    try:
        await event_log.publish_event(event)
    except Exception as exc:  # noqa: BLE001 - the cron keeps the outcome anyway
        log.warning("cannot tell a cron's action", cron=name, error=str(exc) or repr(exc))
