"""Crons (LangGraph Server's crons, Temporal's Schedules) in an agents process: the CronService
API and the scheduler loop, both creating runs through AgentService's CreateRun. See
`crons_scheduler` for how a tick fires exactly once across replicas."""

from __future__ import annotations

from typing import Any, cast

from amelia.v1 import agents_pb2
from amelia_agents.crons_scheduler import Clock, CronScheduler, StartRun, utc_now
from amelia_agents.crons_servicer import CronServicer
from amelia_agents.crons_store import CronStore
from amelia_agents.resources import Resources
from amelia_agents.servicer import AgentServicer


def creating_runs(agents: AgentServicer) -> StartRun:
    """Start a run exactly as a CreateRun call does (the same validation, request-id
    idempotency, thread and queueing)."""

    async def start_run(request: agents_pb2.CreateRunRequest) -> agents_pb2.Run:
        return (await agents.CreateRun(request, cast(Any, None), by_cron=True)).run

    return start_run


def scheduler(res: Resources, agents: AgentServicer, clock: Clock = utc_now) -> CronScheduler:
    """A scheduler on `res`'s database and event log (not started)."""
    crons = CronStore(res.store.sessions)
    return CronScheduler(crons, res.store, creating_runs(agents), res.eventlog, clock=clock)


def start_crons(res: Resources, agents: AgentServicer) -> CronServicer:
    """The CronService for the process, with its scheduler started (stopped on close)."""
    loop = scheduler(res, agents)
    loop.start()
    res.on_close(loop.stop)
    return CronServicer(loop.crons, agents, loop.start_run, res.eventlog)
