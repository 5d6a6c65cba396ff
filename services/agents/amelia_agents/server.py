"""Building the agents service: database, checkpointer, NATS, the API, its workers and the run
reconciler (`sweeper`). Health: `dependency/postgres`, `dependency/nats`, and — with workers in
the process — `dependency/workers` (NOT_SERVING while they cannot run anything)."""

from __future__ import annotations

from pathlib import Path

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from amelia.v1 import agents_pb2, agents_pb2_grpc, git_pb2, git_pb2_grpc
from amelia_agents import queue, workflows
from amelia_agents.checkpoints import open_checkpointer
from amelia_agents.git_service import GitServicer
from amelia_agents.lifecycle import RunEvents
from amelia_agents.servicer import AgentServicer
from amelia_agents.store import Store
from amelia_agents.streaming import RunStreamer
from amelia_agents.sweeper import Sweeper
from amelia_agents.worker import build_workers
from amelia_common.db import (
    create_engine,
    db_health,
    run_migrations,
    session_factory,
    wait_for_database,
)
from amelia_common.eventlog import EventLog
from amelia_common.grpc_server import GrpcService
from amelia_common.nats_client import connect_nats, nats_health
from amelia_common.settings import Settings

SERVICE_NAME = agents_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
GIT_SERVICE_NAME = git_pb2.DESCRIPTOR.services_by_name["GitService"].full_name
SOURCE = "amelia.agents"
MIGRATIONS = Path(__file__).parent / "migrations"


async def migrate(engine: AsyncEngine) -> None:
    await run_migrations(engine, MIGRATIONS, version_table="alembic_version_agents")


async def build_service(settings: Settings) -> GrpcService:
    """The agents service with AGENT_WORKERS worker loops in process, ready to `start()`."""
    workflows.load_plugins(settings.AGENT_WORKFLOW_MODULES)
    engine = create_engine(settings)
    await wait_for_database(engine)
    await migrate(engine)
    cp_pool, saver = await open_checkpointer(settings)
    nc = await connect_nats(settings, "amelia-agents")
    js = nc.jetstream(timeout=settings.EVENTS_PUBLISH_TIMEOUT_SECONDS)
    eventlog = EventLog(nc, settings, source=SOURCE)
    await eventlog.ensure_stream()
    await queue.ensure_queue(js, settings)
    store = Store(session_factory(engine))
    events = RunEvents(eventlog, store)
    streamer = RunStreamer(settings, store)
    servicer = AgentServicer(settings, store, events, nc, js, saver, streamer)
    workers = (
        await build_workers(settings, nc, engine, store, saver, settings.AGENT_WORKERS)
        if settings.AGENT_WORKERS > 0
        else None
    )
    sweeper = Sweeper(settings, engine, store, js)
    sweeper.start()
    dependencies = {"postgres": db_health(engine), "nats": nats_health(nc)}
    if workers is not None:
        dependencies["workers"] = workers.can_work

    def register(server: grpc.aio.Server) -> None:
        agents_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
        git_pb2_grpc.add_GitServiceServicer_to_server(GitServicer(settings, store, events), server)

    async def close_engine() -> None:
        await engine.dispose()

    async def close_nats() -> None:
        await nc.drain()

    async def close_checkpoints() -> None:
        await cp_pool.close()

    async def stop_workers() -> None:
        await sweeper.stop()
        if workers is not None:
            await workers.stop()

    # Hooks run in reverse: workers stop first, then the connections they used close.
    return GrpcService(
        name="agents",
        settings=settings,
        port=settings.AGENTS_GRPC_PORT,
        service_names=[SERVICE_NAME, GIT_SERVICE_NAME],
        register=register,
        dependencies=dependencies,
        on_shutdown=[close_engine, close_checkpoints, close_nats, streamer.close, stop_workers],
    )
