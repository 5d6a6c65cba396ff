"""Building the agents service: database, checkpointer, NATS, the API, its workers, the run
reconciler (`sweeper`) and the cron scheduler (`crons`). Health: `dependency/postgres`,
`dependency/nats`, and — with workers in the process — `dependency/workers` (NOT_SERVING while
they cannot run anything)."""

from __future__ import annotations

import grpc

from amelia.v1 import agents_pb2, agents_pb2_grpc, crons_pb2, crons_pb2_grpc, git_pb2, git_pb2_grpc
from amelia_agents.crons import start_crons
from amelia_agents.git_service import GitServicer
from amelia_agents.resources import Resources, migrate, open_resources
from amelia_agents.servicer import AgentServicer
from amelia_agents.streaming import RunStreamer
from amelia_agents.sweeper import Sweeper
from amelia_agents.webhooks import start_webhooks
from amelia_agents.worker import start_workers
from amelia_common.db import db_health
from amelia_common.grpc_server import GrpcService
from amelia_common.nats_client import nats_health
from amelia_common.settings import Settings

SERVICE_NAME = agents_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
GIT_SERVICE_NAME = git_pb2.DESCRIPTOR.services_by_name["GitService"].full_name
CRON_SERVICE_NAME = crons_pb2.DESCRIPTOR.services_by_name["CronService"].full_name


async def build_service(settings: Settings) -> GrpcService:
    """The agents service with AGENT_WORKERS worker loops in process, ready to `start()`.

    Everything it opened is closed when the service stops, or at once if building it fails."""
    res = await open_resources(settings, "amelia-agents")
    try:
        return await _service(res)
    except BaseException:
        await res.close()
        raise


async def _service(res: Resources) -> GrpcService:
    settings, store, events = res.settings, res.store, res.events
    streamer = RunStreamer(settings, store, events.event_log)
    res.on_close(streamer.close)
    servicer = AgentServicer(settings, store, events, res.nc, res.js, res.checkpointer, streamer)
    dependencies = {"postgres": db_health(res.engine), "nats": nats_health(res.nc)}
    if settings.AGENT_WORKERS > 0:
        workers = await start_workers(res, settings.AGENT_WORKERS)
        servicer.workers = workers  # eager start (`worker.Eager`)
        res.on_close(workers.stop)
        dependencies["workers"] = workers.can_work
    sweeper = Sweeper(settings, res.engine, store, res.js)
    sweeper.start()
    res.on_close(sweeper.stop)
    # POSTs the webhooks of the runs that ended (`webhooks`).
    webhooks = start_webhooks(store, events, settings.RUNS_QUEUE_STREAM)
    res.on_close(webhooks.stop)
    crons = start_crons(res, servicer)  # the API and the scheduler loop

    def register(server: grpc.aio.Server) -> None:
        agents_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
        git_pb2_grpc.add_GitServiceServicer_to_server(GitServicer(settings, store, events), server)
        crons_pb2_grpc.add_CronServiceServicer_to_server(crons, server)

    # Closing runs in reverse: the reconciler and workers stop first, then what they used.
    return GrpcService(
        name="agents",
        settings=settings,
        port=settings.AGENTS_GRPC_PORT,
        service_names=[SERVICE_NAME, GIT_SERVICE_NAME, CRON_SERVICE_NAME],
        register=register,
        dependencies=dependencies,
        on_shutdown=[res.close],
    )


__all__ = ["build_service", "migrate"]  # migrate: for tests that migrate an empty database
