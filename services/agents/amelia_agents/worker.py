"""Agent workers: pull runs from the work queue and execute them, any number, anywhere.

A worker loop fetches one job at a time from the shared durable consumer. For each job it:

1. subscribes to the run's cancel subject (so CancelRun can reach it from any process);
2. takes the run's PostgreSQL advisory lock (one executor per run even if JetStream redelivers
   to a second worker while the first is alive; the lock dies with a killed worker's connection);
3. claims the run (QUEUED/RUNNING → RUNNING, attempt + 1) — a finished or paused run is acked
   and skipped, after re-publishing its end if a crash lost it;
4. executes it while heartbeating (`in_progress()`, and a DB status check that catches a cancel
   whose message was missed), then acks.

On shutdown the current runs are stopped where they are and their jobs are nak'ed, so another
worker continues them from the last checkpoint at once.

Run alone with `python -m amelia_agents.worker` (AGENT_WORKERS loops; at least one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from amelia_agents import queue, workflows
from amelia_agents.executor import Attempt, Executor
from amelia_agents.lifecycle import RunEvents
from amelia_agents.models import TERMINAL_STATES, RunState
from amelia_agents.store import ADVISORY_LOCK_SQL, ADVISORY_UNLOCK_SQL, Store, run_lock_key
from amelia_common.eventlog import EventLog
from amelia_common.logging import configure_logging, get_logger
from amelia_common.settings import Settings, get_settings

log = get_logger("amelia.agents.worker")

FETCH_TIMEOUT_SECONDS = 2.0
STATUS_CHECK_SECONDS = 1.0
CANCEL_REPLY_TIMEOUT_SECONDS = 10.0


@dataclass
class WorkerDeps:
    settings: Settings
    nc: NATS
    js: JetStreamContext
    engine: AsyncEngine
    store: Store
    events: RunEvents
    executor: Executor


class WorkerPool:
    """`concurrency` loops in this process, each running one run at a time."""

    def __init__(self, deps: WorkerDeps, concurrency: int, name: str | None = None) -> None:
        self.deps = deps
        self.concurrency = concurrency
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        for i in range(self.concurrency):
            psub = await self.deps.js.pull_subscribe(
                queue.queue_subject(self.deps.settings),
                durable=queue.CONSUMER,
                stream=self.deps.settings.RUNS_QUEUE_STREAM,
            )
            self._tasks.append(
                asyncio.create_task(self._loop(psub, f"{self.name}/{i}"), name=f"agent-worker-{i}")
            )
        log.info("workers started", worker=self.name, loops=self.concurrency)

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _loop(self, psub: Any, name: str) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await psub.fetch(1, timeout=FETCH_TIMEOUT_SECONDS)
                except TimeoutError:
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - NATS hiccup: wait and fetch again
                    log.warning("fetch failed", error=str(exc) or repr(exc))
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    await self.handle(msg, name)
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def handle(self, msg: Msg, worker: str) -> None:
        run_id = queue.parse_job(msg.data)
        if run_id is None:
            log.warning("dropping a malformed job", data=msg.data[:200])
            await msg.term()
            return
        attempt = Attempt()
        sub = await self.deps.nc.subscribe(
            queue.cancel_subject(run_id), cb=self._cancel_handler(attempt)
        )
        conn = await self.deps.engine.connect()
        locked = False
        try:
            locked = bool(await conn.scalar(ADVISORY_LOCK_SQL, {"k": run_lock_key(run_id)}))
            await conn.commit()
            if not locked:
                # Another live worker has it; look again once it may have finished.
                await msg.nak(delay=self.deps.settings.RUN_ACK_WAIT_SECONDS)
                return
            await self._execute(msg, run_id, attempt, worker)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception:
            log.exception("run pick-up failed; it will be retried", run=str(run_id))
            with contextlib.suppress(Exception):
                await msg.nak(delay=min(5.0, self.deps.settings.RUN_ACK_WAIT_SECONDS))
        finally:
            attempt.finished.set()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                if locked:
                    await conn.execute(ADVISORY_UNLOCK_SQL, {"k": run_lock_key(run_id)})
                    await conn.commit()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _execute(self, msg: Msg, run_id: uuid.UUID, attempt: Attempt, worker: str) -> None:
        deps = self.deps
        row, claimed = await deps.store.claim(run_id, worker)
        for _ in range(10):  # usually the CreateRun transaction commits within a millisecond
            if row is not None:
                break
            await asyncio.sleep(0.02)
            row, claimed = await deps.store.claim(run_id, worker)
        if row is None:
            # CreateRun queues a run just before committing it: a young message may arrive
            # first. Look again shortly; a message whose run never appeared is dropped.
            stored = msg.metadata.timestamp
            if stored is not None and (datetime.now(UTC) - stored).total_seconds() < 30:
                await msg.nak(delay=0.5)
            else:
                await msg.ack()
            return
        if not claimed:
            if row.status in TERMINAL_STATES and row.terminal_sequence is None:
                await deps.events.terminal(row)
            await msg.ack()
            return
        delivered = msg.metadata.num_delivered or 1
        if delivered > deps.settings.RUN_MAX_ATTEMPTS:
            after, _ = await deps.store.finish(
                run_id,
                RunState.FAILED,
                error=f"gave up after {delivered - 1} attempts: the worker running it stopped "
                "each time",
            )
            if after is not None:
                await deps.events.terminal(after)
            await msg.ack()
            return
        log.info("run picked up", run=str(run_id), attempt=row.attempt, worker=worker)
        heartbeat = asyncio.create_task(self._heartbeat(msg, run_id, attempt))
        try:
            attempt.outcome = await deps.executor.execute(row, attempt)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat
        await msg.ack()
        log.info("run left", run=str(run_id), outcome=attempt.outcome)

    async def _heartbeat(self, msg: Msg, run_id: uuid.UUID, attempt: Attempt) -> None:
        """Keep the job ours while it runs, and notice a cancel whose message we missed."""
        interval = max(min(self.deps.settings.RUN_ACK_WAIT_SECONDS / 3, 5.0), 0.1)
        since_ack = 0.0
        while True:
            step = min(interval, STATUS_CHECK_SECONDS)
            await asyncio.sleep(step)
            since_ack += step
            if since_ack >= interval:
                since_ack = 0.0
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            with contextlib.suppress(Exception):
                if await self.deps.store.status(run_id) == RunState.CANCELLED.value:
                    attempt.cancel_requested.set()

    def _cancel_handler(self, attempt: Attempt) -> Any:
        async def on_cancel(request: Msg) -> None:
            attempt.cancel_requested.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(attempt.finished.wait(), CANCEL_REPLY_TIMEOUT_SECONDS)
            with contextlib.suppress(Exception):
                await request.respond(b"cancelled")

        return on_cancel


async def build_workers(
    settings: Settings,
    nc: NATS,
    engine: AsyncEngine,
    store: Store,
    checkpointer: Any,
    concurrency: int,
    name: str | None = None,
) -> WorkerPool:
    """A started pool on existing connections (the service and the standalone worker use it)."""
    js = nc.jetstream(timeout=settings.EVENTS_PUBLISH_TIMEOUT_SECONDS)
    eventlog = EventLog(nc, settings, source="amelia.agents")
    await eventlog.ensure_stream()
    await queue.ensure_queue(js, settings)
    events = RunEvents(eventlog, store)
    executor = Executor(settings, store, events, checkpointer)
    deps = WorkerDeps(settings, nc, js, engine, store, events, executor)
    pool = WorkerPool(deps, concurrency, name)
    await pool.start()
    return pool


async def run_standalone(settings: Settings) -> None:
    """A worker process without the gRPC API: until SIGTERM/SIGINT."""
    import signal

    from amelia_agents.server import migrate
    from amelia_common.db import create_engine, session_factory, wait_for_database
    from amelia_common.nats_client import connect_nats

    workflows.load_plugins(settings.AGENT_WORKFLOW_MODULES)
    engine = create_engine(settings)
    await wait_for_database(engine)
    await migrate(engine)
    nc = await connect_nats(settings, "amelia-agents-worker")
    from amelia_agents.checkpoints import open_checkpointer

    cp_pool, saver = await open_checkpointer(settings)
    store = Store(session_factory(engine))
    pool = await build_workers(settings, nc, engine, store, saver, max(settings.AGENT_WORKERS, 1))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await pool.stop()
    await nc.drain()
    await cp_pool.close()
    await engine.dispose()


def main() -> None:
    from amelia_common.embedded import ensure_infrastructure

    settings = get_settings()
    configure_logging(settings, "agents-worker")
    infra = ensure_infrastructure(settings)
    asyncio.run(run_standalone(infra.settings))


if __name__ == "__main__":
    main()
