"""The run reconciler: a run the API accepted ends, even when its job is lost.

Workers never drop a job of a run that can still run, but a job can be lost outside of them: NATS
restarted before it wrote the job to disk, a publish's acknowledgement was lost, someone purged
the queue, ResumeRun recorded an answer while NATS was down. Every RUN_SWEEP_INTERVAL_SECONDS the
reconciler looks at the runs of its queue that are QUEUED or RUNNING and were last queued more
than RUN_REQUEUE_AFTER_SECONDS ago. Such a run is lost when no job of it is in the queue
(waiting, or delivered and not acknowledged) and no worker holds its lock; the reconciler then
queues a new job for it, and a worker continues it from its checkpoint.

It checks under the run's lock, so any number of reconcilers (every agents replica and every
standalone worker runs one) and workers can race: whoever holds the lock has the run, and a
reconciler that comes second finds the new job and leaves the run alone. A lock whose holder
has been silent for RUN_HEARTBEAT_TIMEOUT_SECONDS (a frozen worker) is taken over, as a worker
does (`RunLock.take_over`): a frozen worker whose job was lost too does not keep its run.

It also admits the next run of a thread whose run ended without admitting it (its worker was
killed between the two; `multitask.settle`), and deletes what a rollback left.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from amelia_agents import multitask, queue
from amelia_agents.locks import RunLock
from amelia_agents.models import RunState
from amelia_agents.periodic import Periodic
from amelia_agents.store import Store, now
from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.agents.sweeper")

_UNFINISHED = (RunState.QUEUED.value, RunState.RUNNING.value)


class Sweeper:
    def __init__(
        self, settings: Settings, engine: AsyncEngine, store: Store, js: JetStreamContext
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.js = js
        self._loop = Periodic(
            "run-reconciler",
            settings.RUN_SWEEP_INTERVAL_SECONDS,
            self.sweep,
            log,
            "the run reconciler cannot look for lost runs",
            wait_first=True,
        )

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def sweep(self) -> list[uuid.UUID]:
        """Admit the runs waiting on a thread whose admitting end was lost (`multitask`), then
        re-queue the lost runs of this queue; returns those re-queued."""
        for thread_id in await self.store.unsettled_threads():
            await multitask.settle_quietly(self.store, self.js, self.settings, thread_id)
        queue_name = self.settings.RUNS_QUEUE_STREAM
        before = now() - timedelta(seconds=self.settings.RUN_REQUEUE_AFTER_SECONDS)
        candidates = await self.store.unfinished_runs(queue_name, before)
        if not candidates:
            return []
        with_jobs = await queue.jobs_by_run(self.js, self.settings)
        lost = []
        for run_id in candidates:
            if run_id not in with_jobs and await self._requeue_if_lost(run_id):
                lost.append(run_id)
        return lost

    async def _requeue_if_lost(self, run_id: uuid.UUID) -> bool:
        lock = RunLock(self.engine, run_id)
        if not await lock.acquire() and await lock.take_over(
            self.settings.RUN_HEARTBEAT_TIMEOUT_SECONDS
        ):
            return False  # a worker has it, and is alive
        try:
            status = await lock.check()
            if status not in _UNFINISHED or await queue.has_job(self.js, self.settings, run_id):
                return False
            await queue.enqueue(self.js, self.settings, run_id, f"requeue-{uuid.uuid4().hex}")
            await self.store.requeued(run_id, self.settings.RUNS_QUEUE_STREAM)
        finally:
            await lock.release()
        log.warning("re-queued a run whose job was lost", run=str(run_id), status=status)
        return True
