"""Agent workers: pull runs from the work queue and execute them, any number, anywhere.

A worker loop fetches one job at a time from the shared durable consumer. For each job it:

1. subscribes to the run's cancel subject (so CancelRun can reach it from any process);
2. takes the run's lock (`locks`: one executor per run even if JetStream delivers the job twice,
   or two jobs of one run exist; the lock dies with a killed worker's connection) — in the same
   statement waiting for the CreateRun still recording the run, if any: CreateRun queues the
   job just before it commits, so a job can arrive before its run is visible, and CreateRun's
   transaction holds the run's recording lock — and its thread's lock (one executor per thread:
   a run that ended, CANCELLED, may still be stopping in its worker). A thread held by another
   executor is waited for beside the loop (`_Wait`: the job and both locks kept, the run QUEUED
   and unclaimed), which goes on with other jobs meanwhile: the next job it takes gives the
   waiting one back at once (to an idle loop, or to this one once it is free again); the wait
   that gets its thread while its loop is idle runs the run as that loop's;
3. claims the run (QUEUED/RUNNING → RUNNING, attempt and pick-up + 1) — on the first look, in
   the lock's own statement once both locks are its (`RunLock.acquire(claim_as=…)`: one round
   trip for the recording wait, the locks and the claim), else on a pooled connection — and
   does with the job what `runstate.after_claim` says: a paused or finished run's job is acked
   and skipped, after re-publishing its end if a crash lost it; a job is never acked while its run is still QUEUED
   (not visible yet: the worker waits for that commit again, `Store.wait_until_recorded`, and
   looks again);
4. executes it while heartbeating (`in_progress()`, and a status check on the lock's connection
   that catches a cancel whose message was missed and a lock PostgreSQL dropped), then acks.

A worker that finds the run's lock taken by a holder silent for RUN_HEARTBEAT_TIMEOUT_SECONDS (a
frozen process) takes the run over (`RunLock.take_over`) and continues it from its checkpoint;
else it gives the job back until that holder would have been silent that long. The frozen
worker, if it ever resumes, writes nothing more for the run (`locks`: fencing) and says so.

A pick-up that meets a PostgreSQL or NATS outage is not the run's failure: the job is nak'ed with
a growing delay (`RUN_RETRY_BACKOFF_SECONDS`, doubling, at most the ack wait) and the run goes
on from its checkpoint later. Pick-ups since the run was last queued are bounded by
`RUN_MAX_ATTEMPTS` (then the run fails, saying so); waiting for another worker's lock is not a
pick-up. The loops themselves survive any exception (with backoff), and `can_work()` — the
service's `dependency/workers` health entry — says whether they can run anything right now.

On shutdown the current runs are stopped where they are and their jobs are nak'ed, so another
worker continues them from the last checkpoint at once.

Run alone with `python -m amelia_agents.worker` (AGENT_WORKERS loops, at least one, and the run
reconciler).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from amelia_agents import queue
from amelia_agents.executor import Attempt, Executor, HandoverError
from amelia_agents.lifecycle import RunEvents
from amelia_agents.locks import LockLostError, RunLock, holding
from amelia_agents.models import RunRow, RunState
from amelia_agents.outages import infrastructure_outage
from amelia_agents.resources import SOURCE, Resources, open_resources
from amelia_agents.runstate import JobAction, after_claim
from amelia_agents.store import Store
from amelia_agents.sweeper import Sweeper
from amelia_agents.webhooks import start_webhooks
from amelia_common import metrics, telemetry
from amelia_common.eventlog import EventLog
from amelia_common.logging import configure_logging, get_logger
from amelia_common.settings import Settings, get_settings

log = get_logger("amelia.agents.worker")

FETCH_TIMEOUT_SECONDS = 2.0
STATUS_CHECK_SECONDS = 1.0
CANCEL_REPLY_TIMEOUT_SECONDS = 10.0
# A job can arrive before the CreateRun that queued it commits: the worker waits for that commit
# (at most RECORDING_WAIT_SECONDS), then claims again after these waits, then gives the job back
# for NOT_VISIBLE_RETRY_SECONDS.
RECORDING_WAIT_SECONDS = 5.0
CLAIM_RETRY_DELAYS = (0.0, 0.0, 0.02, 0.05, 0.1, 0.2)
NOT_VISIBLE_RETRY_SECONDS = 0.5
# The reconciler holds a lock for an instant: look again before waiting a whole ack wait.
LOCK_RETRY_DELAYS = (0.0, 0.05, 0.2)
# A run whose thread another executor holds (`locks`): waited for in statements of this long
# at most (and half an ack wait), the job's ack wait renewed and a silent holder looked for
# between them. Where a loop must wait itself (a job naming no thread), two of them, then the
# job is given back for THREAD_BUSY_RETRY_SECONDS.
THREAD_WAIT_SECONDS = 5.0
THREAD_BUSY_RETRY_SECONDS = 0.5
# A loop whose fetch (or anything else) fails waits this long, doubling up to the maximum.
LOOP_BACKOFF_SECONDS = 0.2
LOOP_BACKOFF_MAX_SECONDS = 5.0
# How often the run and queue gauges of /metrics are refreshed.
METRICS_SAMPLE_SECONDS = 5.0


@dataclass
class _Job:
    """A job a loop took: its run's lock, its pick-up's `Attempt` and cancel subscription.
    An eager start's (`Eager`) has no message until a loop of this process adopts it."""

    msg: Msg | None
    run_id: uuid.UUID
    worker: str
    lock: RunLock
    attempt: Attempt = field(default_factory=Attempt)
    sub: Any = None
    wait: _Wait | None = None  # its thread was busy: it waits beside the loop
    settled: bool = False  # acked or given back (a message adopted later is not this job's)

    async def ack(self) -> None:
        self.settled = True
        if self.msg is not None:
            await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        self.settled = True
        if self.msg is not None:
            await self.msg.nak(delay=delay)


@dataclass
class Eager:
    """A run this process starts itself, right after the CreateRun that recorded it commits
    (eager start): an idle loop's place reserved for it, its run's and thread's locks taken
    before that commit, and the run recorded claimed (`claim`) by CreateRun's statement. Its
    job is queued as any run's: the loop of this process that fetches it adopts it (`ended`:
    the run executed, the job acked by it), another process's finds the lock held."""

    job: _Job
    claim: dict[str, Any]
    reserved: bool = True  # counted in its pool's reserved loops (until a loop adopts it)
    task: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class _Wait:
    """A job whose thread another executor still holds, waiting for it beside its loop (the
    loop fetches on): `started` once it has the thread and runs as the loop's run; until
    then `give_back()` (the loop took another job) stops the wait and gives the job back at
    once, its run still QUEUED and unclaimed."""

    def __init__(self) -> None:
        self.started = False
        self.task: asyncio.Task[None] | None = None

    async def give_back(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    @property
    def over(self) -> bool:
        """Started (its run is its loop's), or ended without it."""
        return self.started or self.task is None or self.task.done()

    async def finished(self) -> None:
        """Once its run has ended (cancelling the caller does not cancel it: `give_back`)."""
        if self.task is not None and not self.task.done():
            await asyncio.wait([self.task])


@dataclass
class WorkerDeps:
    settings: Settings
    nc: NATS
    js: JetStreamContext
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
        self._failing: set[str] = set()
        self._could_work: bool | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._busy_loops = 0  # loops running a job
        self._reserved = 0  # idle loops' places an eager start holds
        self._eager: dict[uuid.UUID, Eager] = {}

    @contextlib.contextmanager
    def _busy(self, idle: Any) -> Iterator[None]:
        """A loop counted busy, not idle (its `idle` gauge, if any), while it runs a job."""
        self._busy_loops += 1
        if idle is not None:
            idle.dec()
        metrics.WORKER_LOOPS.labels("busy").inc()
        try:
            yield
        finally:
            self._busy_loops -= 1
            metrics.WORKER_LOOPS.labels("busy").dec()
            if idle is not None:
                idle.inc()

    async def eager(self, run_id: uuid.UUID, thread_id: uuid.UUID) -> Eager | None:
        """Reserve an idle loop's place for a run CreateRun is about to record, and take its
        run's and thread's locks (nobody else can know the run yet; its thread may still be
        held by a run's stopping executor). None: no idle loop, or the thread is held — the
        run goes the queue's way only. Then `start_eager` after the commit, else `abandon`."""
        if (
            not self.deps.settings.AGENT_EAGER_START
            or self._stopping.is_set()
            or self._failing
            or self._busy_loops + self._reserved >= self.concurrency
        ):
            return None
        lock = self.deps.store.run_lock(run_id)
        lock.exclusive_thread(thread_id)
        claim = {
            "status": RunState.RUNNING.value,
            "attempt": 1,
            "pickups": 1,
            "worker": f"{self.name}/eager",
            "start_time": datetime.now(UTC),
        }
        eager = Eager(_Job(None, run_id, claim["worker"], lock), claim)
        self._eager[run_id] = eager
        self._reserve(1)
        try:
            eager.job.sub = await self.deps.nc.subscribe(
                queue.cancel_subject(run_id), cb=self._cancel_handler(eager.job.attempt)
            )
            if await lock.acquire() and lock.thread_held:
                return eager
        except Exception as exc:  # noqa: BLE001 - the queue's way then
            log.debug("no eager start", run=str(run_id), error=str(exc) or repr(exc))
        await self.abandon(eager)
        return None

    def start_eager(self, eager: Eager, row: RunRow) -> None:
        """Execute the run CreateRun recorded claimed (`row`, as recorded) now, beside it. After
        `stop`, not: its locks go, and its job (queued) has another worker claim it again."""
        run = self.abandon(eager) if self._stopping.is_set() else self._run_eager(eager, row)
        eager.task = asyncio.create_task(run, name=f"eager-{row.id}")

    async def abandon(self, eager: Eager) -> None:
        """The run was not recorded claimed (CreateRun failed): its locks go, and a loop that
        adopted its job handles it as any job."""
        job = eager.job
        job.attempt.finished.set()  # (a cancel request waiting for it is answered)
        try:
            if job.sub is not None:
                with contextlib.suppress(Exception):
                    await job.sub.unsubscribe()
            await job.lock.release()
        finally:
            self._eager_ended(eager)

    def _reserve(self, n: int) -> None:
        self._reserved += n
        metrics.WORKER_LOOPS.labels("idle").dec(n)
        metrics.WORKER_LOOPS.labels("busy").inc(n)

    def _eager_ended(self, eager: Eager) -> None:
        if eager.reserved:
            eager.reserved = False
            self._reserve(-1)
        self._eager.pop(eager.job.run_id, None)
        eager.ended.set()

    async def _run_eager(self, eager: Eager, row: RunRow) -> None:
        job = eager.job
        try:
            async with self._picking_up(job):
                job.lock.fence(row.attempt, self.deps.settings.RUN_HEARTBEAT_TIMEOUT_SECONDS / 2)
                await self._run(job, row)
        finally:
            self._eager_ended(eager)

    async def _adopt(self, eager: Eager, msg: Msg) -> bool:
        """The job of a run this process started eagerly: its run's heartbeat renews it and
        its end acks it, this loop busy until then. False: not this job's any more (settled
        before, or never started) — the loop handles it as any job."""
        job = eager.job
        if job.settled:
            return False
        job.msg = msg
        if eager.reserved:  # this loop's place now
            eager.reserved = False
            self._reserve(-1)
        await eager.ended.wait()
        return job.settled

    async def start(self) -> None:
        for i in range(self.concurrency):
            name = f"{self.name}/{i}"
            self._tasks.append(asyncio.create_task(self._loop(name), name=f"agent-worker-{i}"))
        self._sampler = asyncio.create_task(self._sample_metrics(), name="agent-worker-metrics")
        log.info("workers started", worker=self.name, loops=self.concurrency)

    async def stop(self) -> None:
        self._stopping.set()
        eager = [e.task for e in self._eager.values() if e.task is not None]
        for task in (*self._tasks, *eager, *([self._sampler] if self._sampler else [])):
            task.cancel()
        await asyncio.gather(*eager, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sampler is not None:
            await asyncio.gather(self._sampler, return_exceptions=True)
        self._tasks.clear()

    async def can_work(self) -> bool:
        """Whether these workers can run runs now: every loop alive, none stuck failing, and
        PostgreSQL and NATS answering. Changes are logged (the standalone worker's health)."""
        ok = (
            bool(self._tasks)
            and all(not task.done() for task in self._tasks)
            and not self._failing
            and self.deps.nc.is_connected
        )
        reason = "" if ok else "a worker loop is failing or NATS is unreachable"
        if ok:
            try:
                await self.deps.store.ping()
            except Exception as exc:  # noqa: BLE001 - PostgreSQL unreachable
                ok, reason = False, f"PostgreSQL: {exc or type(exc).__name__}"
        if ok != self._could_work:
            if ok:
                log.info("workers can work", worker=self.name)
            else:
                log.warning("workers cannot work", worker=self.name, reason=reason)
            self._could_work = ok
        metrics.WORKERS_CAN_WORK.set(1 if ok else 0)
        return ok

    async def _sample_metrics(self) -> None:
        """Refresh `amelia_runs` (unfinished runs by status and workflow) and the run queue's
        gauges (depth, in flight, age of the oldest QUEUED run) for /metrics."""
        while not self._stopping.is_set():
            try:
                await sample_run_metrics(self.deps)
            except Exception as exc:  # noqa: BLE001 - an outage: the gauges wait for the next
                log.debug("run metrics not sampled", error=str(exc) or repr(exc))
            await asyncio.sleep(METRICS_SAMPLE_SECONDS)

    async def _loop(self, name: str) -> None:
        """Fetch and handle jobs until stopped, whatever fails (with backoff); counted as an
        idle or busy loop while it lives."""
        idle = metrics.WORKER_LOOPS.labels("idle")
        idle.inc()
        try:
            await self._fetch_loop(name, idle)
        finally:
            idle.dec()

    async def _fetch_loop(self, name: str, idle: Any) -> None:
        psub: Any = None
        backoff = LOOP_BACKOFF_SECONDS
        waiting: _Wait | None = None  # this loop's job waiting for its thread, if any
        while not self._stopping.is_set():
            try:
                if waiting is not None and waiting.over:
                    await waiting.finished()  # its run is this loop's run
                    waiting = None
                    continue
                if psub is None:
                    if backoff > LOOP_BACKOFF_SECONDS:
                        # After a failure: the queue may be gone with a NATS that lost its store.
                        await queue.ensure_queue(self.deps.js, self.deps.settings)
                    psub = await self.deps.js.pull_subscribe_bind(
                        durable=queue.CONSUMER, stream=self.deps.settings.RUNS_QUEUE_STREAM
                    )
                try:
                    msgs = await psub.fetch(1, timeout=FETCH_TIMEOUT_SECONDS)
                except TimeoutError:
                    msgs = []
                for msg in msgs:
                    if waiting is not None and waiting.started:
                        # Its thread came free during the fetch: the wait runs as this loop's
                        # run, this job goes to another loop (not a pick-up).
                        await msg.nak()
                        continue
                    if waiting is not None:
                        await waiting.give_back()
                    with self._busy(idle):
                        waiting = await self.handle(msg, name, idle)
                self._failing.discard(name)
                backoff = LOOP_BACKOFF_SECONDS
            except asyncio.CancelledError:
                if waiting is not None:
                    await waiting.give_back()
                break
            except Exception as exc:  # noqa: BLE001 - NATS or PostgreSQL hiccup: wait, go on
                self._failing.add(name)
                if psub is not None:
                    with contextlib.suppress(Exception):
                        await psub.unsubscribe()
                    psub = None
                log.warning(
                    "worker loop failed; trying again",
                    loop=name,
                    error=str(exc) or repr(exc),
                    retry_in=backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, LOOP_BACKOFF_MAX_SECONDS)
        if psub is not None:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def handle(self, msg: Msg, worker: str, idle: Any = None) -> _Wait | None:
        """Take one job, in a span continuing the trace of whoever queued it. Its `_Wait` when
        its thread is another executor's (`idle`: the loop's gauge, moved while it runs)."""
        run_id, thread_id = queue.parse_job(msg.data)
        with telemetry.consumer_span(
            f"{self.deps.settings.RUNS_QUEUE_STREAM} process",
            msg.headers,
            {"messaging.system": "nats", "amelia.run": str(run_id), "amelia.worker": worker},
        ):
            if run_id is None:
                log.warning("dropping a malformed job", data=msg.data[:200])
                await msg.term()
                return None
            eager = self._eager.get(run_id)
            if eager is not None and await self._adopt(eager, msg):
                return None
            lock = self.deps.store.run_lock(run_id)
            lock.exclusive_thread(thread_id)  # one executor per thread too (`locks`)
            job = _Job(msg, run_id, worker, lock)
            await self._handle(job, idle)
            return job.wait

    async def _handle(self, job: _Job, idle: Any) -> None:
        async with self._picking_up(job):
            job.sub = await self.deps.nc.subscribe(
                queue.cancel_subject(job.run_id), cb=self._cancel_handler(job.attempt)
            )
            retry_in = await self._lock(job.lock, job.worker)
            if retry_in:
                # Another worker has it; look again once it may have finished, or gone silent.
                retry_in = min(retry_in, self.deps.settings.RUN_ACK_WAIT_SECONDS)
                log.info(
                    "run held by another worker", run=str(job.run_id), retry_in=round(retry_in, 2)
                )
                await job.nak(retry_in)
                return
            if job.lock.thread_busy:
                log.info("run waits for its thread beside its loop", run=str(job.run_id))
                job.wait = _Wait()
                job.wait.task = asyncio.create_task(
                    self._wait_then_execute(job, job.wait, idle), name=f"thread-wait-{job.run_id}"
                )
                return
            await self._execute(job)

    async def _wait_then_execute(self, job: _Job, wait: _Wait, idle: Any) -> None:
        """A `_Wait`: the thread's lock waited for (taking it over from a silent holder), then
        the run executed as its loop's run. Cancelled (`give_back`): the job goes back at once."""
        msg = job.msg
        assert msg is not None  # (a loop's job)
        async with self._picking_up(job):
            if not await self._wait_for_thread(msg, job.lock, None, job.attempt):
                await self._thread_busy(msg, job.lock)  # (cancelled meanwhile)
                return
            wait.started = True  # (no await since the wait: its loop has not taken another job)
            with self._busy(idle):
                await self._execute(job)

    @contextlib.asynccontextmanager
    async def _picking_up(self, job: _Job) -> AsyncIterator[None]:
        """Around a job's pick-up: what fails gives the job back (with the right delay), and
        the subscription and the locks go at the end — unless it waits beside the loop (its
        `_Wait` does the same around its part)."""
        try:
            yield
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await job.nak()
            raise
        except (HandoverError, LockLostError) as exc:
            log.warning(
                "lost the run: another worker took it over; leaving it, writing nothing more",
                run=str(job.run_id),
                reason=str(exc),
            )
            with contextlib.suppress(Exception):
                await job.nak(self.deps.settings.RUN_ACK_WAIT_SECONDS)
        except Exception as exc:  # the job goes back to the queue
            delay = self._retry_delay(job.msg)
            dependency = infrastructure_outage(exc)
            if dependency:
                log.warning(
                    "run pick-up stopped: a dependency is unreachable; it will be retried",
                    run=str(job.run_id),
                    dependency=dependency,
                    error=str(exc) or repr(exc),
                    retry_in=delay,
                )
                await self._give_back_pickup(job)
            else:
                log.exception("run pick-up failed; it will be retried", run=str(job.run_id))
            with contextlib.suppress(Exception):
                await job.nak(delay)
        finally:
            if job.wait is None or job.wait.task is asyncio.current_task():
                job.attempt.finished.set()
                if job.sub is not None:
                    with contextlib.suppress(Exception):
                        await job.sub.unsubscribe()
                await job.lock.release()

    async def _give_back_pickup(self, job: _Job) -> None:
        """An outage stopped this pick-up: it does not count toward RUN_MAX_ATTEMPTS (QA s22:
        six NATS freezes failed a run "gave up after 5 attempts"). Best effort: with
        PostgreSQL away too it stays counted, as a pick-up the worker did not come back from."""
        attempt = job.lock.attempt
        if attempt is None:
            return  # stopped before its claim: nothing was counted
        try:
            async with asyncio.timeout(self.deps.settings.DATABASE_CONNECT_TIMEOUT_SECONDS):
                await self.deps.store.give_back_pickup(job.run_id, attempt)
        except Exception as exc:  # noqa: BLE001 - PostgreSQL away: it stays counted
            log.info("pick-up still counted", run=str(job.run_id), error=str(exc) or repr(exc))

    async def _lock(self, lock: RunLock, worker: str) -> float:
        """0 once the run's lock is this worker's; else how long to wait before trying again
        (its holder is alive, or not silent for long enough yet to be taken over)."""
        for i, delay in enumerate(LOCK_RETRY_DELAYS):
            await asyncio.sleep(delay)
            # The first look also waits for the CreateRun still recording the run, if any (a
            # job can arrive before it commits), and then — its thread's lock taken too —
            # claims the run in the same statement (`_claim` takes it from the lock).
            if i == 0:
                if await lock.acquire(RECORDING_WAIT_SECONDS, claim_as=worker):
                    return 0.0
            elif await lock.acquire():
                return 0.0
        return await lock.take_over(self.deps.settings.RUN_HEARTBEAT_TIMEOUT_SECONDS)

    async def _wait_for_thread(
        self, msg: Msg, lock: RunLock, rounds: int | None = 2, attempt: Attempt | None = None
    ) -> bool:
        """The run's lock is this worker's, its thread's another executor's (a run of the
        thread that ended, its worker still stopping it): wait for it (the job kept, its ack
        wait renewed), `rounds` waits at most (None: until it is free), taking it over from a
        holder silent for the heartbeat timeout; not after the run's cancel (`attempt`).
        Whether the thread is this worker's now."""
        settings = self.deps.settings
        wait = min(THREAD_WAIT_SECONDS, settings.RUN_ACK_WAIT_SECONDS / 2)
        for _ in itertools.count() if rounds is None else range(rounds):
            if attempt is not None and attempt.cancel_requested.is_set():
                return False
            with contextlib.suppress(Exception):
                await msg.in_progress()
            if await lock.wait_thread(wait):
                return True
            # A silent holder is terminated (0: the next wait takes the thread at once).
            await lock.take_over(settings.RUN_HEARTBEAT_TIMEOUT_SECONDS, thread=True)
        return False

    async def _thread_busy(self, msg: Msg, lock: RunLock) -> None:
        """Give the job back, not a pick-up (the run stays QUEUED, unclaimed): its thread is
        still another executor's. It comes back in THREAD_BUSY_RETRY_SECONDS."""
        await lock.release()
        log.info(
            "run's thread still held by another executor; the run waits",
            run=str(lock.run_id),
            retry_in=THREAD_BUSY_RETRY_SECONDS,
        )
        await msg.nak(delay=THREAD_BUSY_RETRY_SECONDS)

    def _retry_delay(self, msg: Msg | None) -> float:
        settings = self.deps.settings
        delivered = max(msg.metadata.num_delivered or 1, 1) if msg is not None else 1
        return float(
            min(
                settings.RUN_RETRY_BACKOFF_SECONDS * 2 ** min(delivered - 1, 16),
                settings.RUN_ACK_WAIT_SECONDS,
            )
        )

    async def _claim(
        self, msg: Msg, run_id: uuid.UUID, worker: str, lock: RunLock
    ) -> RunRow | None:
        """The claimed run; None when this job is done with (acked, or given back): the claim
        and ack rules of `runstate` (2 and 3). The first claim is the one the lock's statement
        made, if it made one (`RunLock.take_claim`)."""
        deps = self.deps
        action, row = JobAction.RETRY_SOON, None
        by_lock = lock.take_claim()
        for i, delay in enumerate(CLAIM_RETRY_DELAYS):
            if i == 1 and row is None and action is JobAction.RETRY_SOON:
                # Not visible: most likely its CreateRun has not committed yet; wait for that
                # commit itself rather than a guessed while.
                await deps.store.wait_until_recorded(run_id, RECORDING_WAIT_SECONDS)
            await asyncio.sleep(delay)
            if i == 0 and by_lock is not None:
                row, claimed = deps.store.claimed_by_lock(by_lock)
            else:
                row, claimed = await deps.store.claim(run_id, worker)
            action = after_claim(row, claimed, _job_age(msg))
            if action not in (JobAction.RETRY_SOON, JobAction.DROP):
                break
        if action is JobAction.RUN:
            return row
        if action is JobAction.RETRY_SOON:
            await msg.nak(delay=NOT_VISIBLE_RETRY_SECONDS)
            return None
        if action is JobAction.DROP:
            log.info("dropping the job of a run that was never recorded", run=str(run_id))
        elif action is JobAction.PUBLISH_END and row is not None:
            await deps.events.terminal(row)
        elif action is JobAction.TELL_QUESTION and row is not None:
            await deps.events.question_told(row)
        await msg.ack()
        return None

    async def _execute(self, job: _Job) -> None:
        deps = self.deps
        msg, run_id, worker, lock = job.msg, job.run_id, job.worker, job.lock
        assert msg is not None  # (a loop's job: only an eager start's has none)
        row = await self._claim(msg, run_id, worker, lock)
        if row is None:
            return
        if not await lock.hold_thread(row.thread_id) and not await self._wait_for_thread(msg, lock):
            # (A job that did not name its thread, for a run not visible when it was locked.)
            raise HandoverError(f"runs/{run_id}'s thread is held by another executor")
        # This pick-up is the run's `row.attempt`: a takeover claims again (see `locks`).
        lock.fence(row.attempt, deps.settings.RUN_HEARTBEAT_TIMEOUT_SECONDS / 2)
        if row.pickups > deps.settings.RUN_MAX_ATTEMPTS:
            after, _ = await deps.store.finish(
                run_id,
                RunState.FAILED,
                error=f"gave up after {row.pickups - 1} attempts: each pick-up of the run was "
                "interrupted (its worker stopped or froze, or PostgreSQL was unreachable even "
                "to record that an outage stopped it)",
                attempt=row.attempt,
            )
            if after is not None:
                await deps.events.terminal(after)
            await job.ack()
            return
        await self._run(job, row)

    async def _run(self, job: _Job, row: RunRow) -> None:
        """Execute the claimed run `row` while heartbeating, then ack its job."""
        attempt, run_id = job.attempt, job.run_id
        log.info("run picked up", run=str(run_id), attempt=row.attempt, worker=job.worker)
        heartbeat = asyncio.create_task(self._heartbeat(job))
        try:
            with holding(job.lock):  # each write of the pick-up first asks `still_held()`
                attempt.outcome = await self.deps.executor.execute(row, attempt)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat
        await job.ack()
        log.info("run left", run=str(run_id), outcome=attempt.outcome)
        metrics.RUNS_LEFT.labels(row.workflow or "agent", attempt.outcome or "unknown").inc()

    async def _heartbeat(self, job: _Job) -> None:
        """Keep the job ours while it runs, notice a cancel whose message we missed, and keep
        the run's lock (PostgreSQL drops it with the connection when it restarts): the check
        is the heartbeat another worker's takeover looks at, and renews the lease the pick-up's
        writes rely on (`locks`); a lost lock hands the run over."""
        attempt, lock = job.attempt, job.lock
        interval = max(min(self.deps.settings.RUN_ACK_WAIT_SECONDS / 3, 5.0), 0.1)
        since_ack = 0.0
        while True:
            step = min(interval, STATUS_CHECK_SECONDS)
            await asyncio.sleep(step)
            since_ack += step
            if since_ack >= interval:
                since_ack = 0.0
                if job.msg is not None:  # (an eager start's, once adopted)
                    with contextlib.suppress(Exception):
                        await job.msg.in_progress()
            try:
                status = await lock.check()
            except LockLostError:
                attempt.handover.set()
                return
            except Exception:  # noqa: BLE001 - PostgreSQL unreachable: look again shortly
                continue
            if status == RunState.CANCELLED.value:
                attempt.cancel_requested.set()

    def _cancel_handler(self, attempt: Attempt) -> Any:
        async def on_cancel(request: Msg) -> None:
            attempt.cancel_requested.set()
            try:
                async with asyncio.timeout(CANCEL_REPLY_TIMEOUT_SECONDS):
                    await attempt.finished.wait()
            except TimeoutError:
                pass
            finally:
                # Also when the attempt's end unsubscribes this handler (cancelling it) as it
                # wakes: the caller is waiting for this reply.
                with contextlib.suppress(Exception):
                    await request.respond(b"cancelled")

        return on_cancel


def _job_age(msg: Msg) -> float:
    """Seconds since the job was queued."""
    stored = msg.metadata.timestamp
    return (datetime.now(UTC) - stored).total_seconds() if stored is not None else 0.0


async def sample_run_metrics(deps: WorkerDeps) -> None:
    """One refresh of the run and queue gauges (JetStream's consumer, then PostgreSQL)."""
    info = await deps.js.consumer_info(deps.settings.RUNS_QUEUE_STREAM, queue.CONSUMER)
    metrics.RUN_QUEUE_DEPTH.set(info.num_pending or 0)
    metrics.RUN_QUEUE_IN_FLIGHT.set(info.num_ack_pending or 0)
    counts, oldest = await deps.store.unfinished_counts()
    metrics.RUNS.clear()
    for state in (RunState.QUEUED, RunState.RUNNING, RunState.PAUSED):
        metrics.RUNS.labels(state.value, "agent").set(0)
    for status, workflow, count in counts:
        metrics.RUNS.labels(status, workflow).set(count)
    metrics.RUN_QUEUE_OLDEST_AGE.set(oldest)


async def start_workers(res: Resources, concurrency: int, name: str | None = None) -> WorkerPool:
    """A started pool of `concurrency` loops on the process's resources."""
    deps = _deps(res.settings, res.nc, res.store, res.events, res.checkpointer)
    return await _started(deps, concurrency, name)


async def build_workers(
    settings: Settings,
    nc: NATS,
    engine: AsyncEngine,
    store: Store,
    checkpointer: Any,
    concurrency: int,
    name: str | None = None,
) -> WorkerPool:
    """A started pool on connections a caller opened itself (the fault tests' pools, each
    standing for a process of its own, with its own event log on `nc`). A process starts its
    workers with `start_workers` on its `Resources`. `engine` is the store's (unused here)."""
    eventlog = EventLog(nc, settings, source=SOURCE)
    await eventlog.ensure_stream()
    deps = _deps(settings, nc, store, RunEvents(eventlog, store), checkpointer)
    await queue.ensure_queue(deps.js, settings)
    return await _started(deps, concurrency, name)


def _deps(
    settings: Settings, nc: NATS, store: Store, events: RunEvents, checkpointer: Any
) -> WorkerDeps:
    js = nc.jetstream(timeout=settings.EVENTS_PUBLISH_TIMEOUT_SECONDS)
    executor = Executor(settings, store, events, checkpointer)
    return WorkerDeps(settings, nc, js, store, events, executor)


async def _started(deps: WorkerDeps, concurrency: int, name: str | None) -> WorkerPool:
    pool = WorkerPool(deps, concurrency, name)
    await pool.start()
    return pool


async def _watch_health(pool: WorkerPool, stop: asyncio.Event) -> None:
    """The standalone worker has no health endpoint: log when its workers cannot work."""
    while not stop.is_set():
        with contextlib.suppress(Exception):
            await pool.can_work()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STATUS_CHECK_SECONDS):
                await stop.wait()


async def run_standalone(settings: Settings) -> None:
    """A worker process without the gRPC API: until SIGTERM/SIGINT."""
    res = await open_resources(settings, "amelia-agents-worker")
    try:
        pool = await start_workers(res, max(settings.AGENT_WORKERS, 1))
        res.on_close(pool.stop)
        sweeper = Sweeper(settings, res.engine, res.store, res.js)
        sweeper.start()
        res.on_close(sweeper.stop)
        # A mesh whose only process with the database is this one still delivers webhooks.
        res.on_close(start_webhooks(res.store, res.events, settings.RUNS_QUEUE_STREAM).stop)
        gc.freeze()  # as GrpcService.serve does: start-up's objects out of the collector's sight
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _watch_health(pool, stop)
    finally:
        await res.close()


def main() -> None:
    """Joins the `amelia up` running for this folder (its mesh.json) for every setting not
    given, or the servers DATABASE_URL and NATS_URL name; else says in one line what to do."""
    from amelia_common.embedded import EmbeddedStartError, ensure_infrastructure
    from amelia_common.running_mesh import (
        find_running_mesh,
        join_running_mesh,
        metrics_port_or_free,
    )

    settings = get_settings()
    configure_logging(settings, "agents-worker")
    if find_running_mesh(settings) is None and not (settings.DATABASE_URL and settings.NATS_URL):
        # Else it would start PostgreSQL and NATS of its own on the mesh's data, with no model,
        # events or rag service, and take (and fail) the stopped mesh's runs.
        raise SystemExit(
            "amelia-agents-worker: no `amelia up` runs for this folder, and DATABASE_URL and "
            "NATS_URL are not both set: a worker joins a mesh, it never starts one; start the "
            "mesh here (`make run`), or set DATABASE_URL, NATS_URL, EVENTS_ADDRESS and "
            "RAG_ADDRESS to the mesh's"
        )
    settings = join_running_mesh(settings)
    port = metrics_port_or_free(
        settings.WORKER_METRICS_PORT, settings.bind_host, "WORKER_METRICS_PORT"
    )
    settings = settings.model_copy(update={"WORKER_METRICS_PORT": port})
    telemetry.start(settings, "agents-worker")
    try:
        infra = ensure_infrastructure(settings)
    except EmbeddedStartError as exc:
        raise SystemExit(
            f"amelia-agents-worker: {exc} (no `amelia up` runs for this folder: start one "
            "here, or set DATABASE_URL, NATS_URL, EVENTS_ADDRESS and RAG_ADDRESS to the mesh's)"
        ) from None
    asyncio.run(run_standalone(infra.settings))


if __name__ == "__main__":
    main()
