"""What an agents process runs on, opened once, in order: the database (waited for, migrated),
LangGraph's checkpointer, NATS, the event log's stream and the run queue, the store and the run
events on them.

The API service (`server.build_service`) and the standalone worker (`worker.run_standalone`)
both start from `open_resources`. What is opened is closed in reverse order by `close()`, which
also runs whatever a caller added with `on_close` (workers, the reconciler) first; when opening
fails half-way, what was already open is closed before the error propagates, so a failed start
leaks no connection or pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from amelia_agents import queue, workflows
from amelia_agents.checkpoints import open_checkpointer
from amelia_agents.lifecycle import RunEvents
from amelia_agents.store import Store
from amelia_common import connections
from amelia_common.db import create_engine, run_migrations, session_factory, wait_for_database
from amelia_common.eventlog import EventLog
from amelia_common.logging import get_logger
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

log = get_logger("amelia.agents.resources")

SOURCE = "amelia.agents"  # the `source` of the events agents publish
MIGRATIONS = Path(__file__).parent / "migrations"

Closer = Callable[[], Awaitable[Any]]


async def migrate(engine: AsyncEngine) -> None:
    """Bring the agents' tables up to date (safe when replicas start together)."""
    await run_migrations(engine, MIGRATIONS, version_table="alembic_version_agents")


@dataclass
class Resources:
    """An agents process's connections and the objects built on them; `close()` once."""

    settings: Settings
    engine: AsyncEngine
    checkpointer: BaseCheckpointSaver[Any]
    nc: NATS
    js: JetStreamContext
    eventlog: EventLog
    store: Store
    events: RunEvents
    _closers: list[Closer] = field(default_factory=list)

    def on_close(self, closer: Closer) -> None:
        """Run `closer` at `close()`, before anything opened earlier (last added, first run)."""
        self._closers.append(closer)

    async def close(self) -> None:
        await _close_all(self._closers)


async def _close_all(closers: list[Closer]) -> None:
    """Run `closers` last first, each even when one before it failed (that one is logged)."""
    while closers:
        closer = closers.pop()
        try:
            await closer()
        except Exception:
            log.exception("closing failed", closer=getattr(closer, "__qualname__", repr(closer)))


# The connections a client without superuser rights can open, and those open now.
_CONNECTION_ROOM = text(
    "SELECT current_setting('max_connections')::int"
    " - current_setting('superuser_reserved_connections')::int"
    " - coalesce(current_setting('reserved_connections', true), '0')::int,"
    " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
)


async def _check_connections_fit(engine: AsyncEngine, settings: Settings) -> None:
    """Stop the start if this process's pools alone exceed the server's max_connections; warn
    if they do next to the connections already open (other replicas, other services)."""
    async with engine.connect() as conn:
        available, in_use = (await conn.execute(_CONNECTION_ROOM)).one()
    warning = connections.check_fits(settings, available, in_use)
    if warning:
        log.warning("postgres connections may run out", detail=warning)


async def open_resources(settings: Settings, client_name: str) -> Resources:
    """Open everything in order; `client_name` names the NATS connection (`amelia-agents`,
    `amelia-agents-worker`). Plugins in AGENT_WORKFLOW_MODULES are loaded first, so a wrong
    module name stops the start before anything is opened.

    Both pools have a connection for each worker loop on top of DATABASE_POOL_SIZE: a running
    run holds its lock on an engine connection (`locks`) and its pick-up's checkpoint
    connection (`checkpoints.for_pickup`), so AGENT_WORKERS busy loops never leave the API's
    calls waiting for a pool. A server whose max_connections cannot take this process's pools
    stops the start (`connections.check_fits`)."""
    workflows.load_plugins(settings.AGENT_WORKFLOW_MODULES)
    closers: list[Closer] = []
    try:
        engine = create_engine(settings, held=connections.engine_held(settings))
        closers.append(engine.dispose)
        await wait_for_database(engine)
        await _check_connections_fit(engine, settings)
        await migrate(engine)
        checkpoints, saver = await open_checkpointer(
            settings, max_size=connections.checkpoint_pool_size(settings)
        )
        closers.append(checkpoints.close)
        nc = await connect_nats(settings, client_name)
        closers.append(nc.drain)
        js = nc.jetstream(timeout=settings.EVENTS_PUBLISH_TIMEOUT_SECONDS)
        eventlog = EventLog(nc, settings, source=SOURCE)
        await eventlog.ensure_stream()
        await queue.ensure_queue(js, settings)
    except BaseException:
        await _close_all(closers)
        raise
    store = Store(session_factory(engine))
    return Resources(
        settings=settings,
        engine=engine,
        checkpointer=saver,
        nc=nc,
        js=js,
        eventlog=eventlog,
        store=store,
        events=RunEvents(eventlog, store),
        _closers=closers,
    )
