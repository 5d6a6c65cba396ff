"""The run queue: a JetStream work-queue stream, and the core-NATS cancel subjects.

Subjects (the only place they are defined):

- `amelia.jobs.<RUNS_QUEUE_STREAM>.<run uuid>` — a run's jobs (stream `RUNS_QUEUE_STREAM`,
  work-queue retention, file storage). One subject per run, so whether a run has a job waiting
  is one question to JetStream: the reconciler (`sweeper`) asks it before re-queuing a run. Each
  message is `{"run": "<uuid>", "thread": "<uuid>"}` (the thread, when the sender knew it); the durable pull consumer `agent-workers` is shared by every
  worker, so each message goes to one worker at a time. A worker heartbeats with
  `in_progress()` while it runs (the ack wait is `RUN_ACK_WAIT_SECONDS`) and acks when the run
  is paused or finished — never while it is still QUEUED or RUNNING; a worker that dies stops
  heartbeating, and JetStream redelivers the message to another worker after the ack wait.
  `amelia.jobs.<RUNS_QUEUE_STREAM>` (no run id) is where earlier versions put every job; it is
  still consumed.
- `amelia.runs.<uuid>.cancel` — request/reply: CancelRun asks; the worker executing the run
  (subscribed while it does) stops it, publishes `run.cancelled` and replies. No responder
  means no worker has it, so CancelRun publishes `run.cancelled` itself.
"""

from __future__ import annotations

import json
import uuid

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from amelia_common import telemetry
from amelia_common.errors import UnavailableError
from amelia_common.logging import get_logger
from amelia_common.nats_client import ensure_stream
from amelia_common.settings import Settings

log = get_logger("amelia.agents.queue")

CONSUMER = "agent-workers"


def _prefix(settings: Settings) -> str:
    return f"amelia.jobs.{settings.RUNS_QUEUE_STREAM}"


def job_subject(settings: Settings, run_id: uuid.UUID) -> str:
    return f"{_prefix(settings)}.{run_id}"


def queue_subjects(settings: Settings) -> list[str]:
    """The stream's subjects: one per run, and the single subject earlier versions used."""
    return [f"{_prefix(settings)}.*", _prefix(settings)]


def cancel_subject(run_id: uuid.UUID) -> str:
    return f"amelia.runs.{run_id}.cancel"


def consumer_config(settings: Settings) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=CONSUMER,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=settings.RUN_ACK_WAIT_SECONDS,
        # Pick-ups are bounded by RUN_MAX_ATTEMPTS in the worker, which records why.
        max_deliver=-1,
        max_ack_pending=-1,
        # Every subject of the stream (the work queue's only consumer).
        filter_subject=None,
    )


async def ensure_queue(js: JetStreamContext, settings: Settings) -> None:
    """Create the work-queue stream and the shared consumer (or bring them up to date)."""
    config = api.StreamConfig(
        name=settings.RUNS_QUEUE_STREAM,
        subjects=queue_subjects(settings),
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        duplicate_window=120,
        num_replicas=settings.RUNS_QUEUE_REPLICAS,
    )
    await ensure_stream(js, config)
    wanted = consumer_config(settings)
    try:
        await js.add_consumer(settings.RUNS_QUEUE_STREAM, wanted)
    except nats.js.errors.BadRequestError as exc:
        existing = await js.consumer_info(settings.RUNS_QUEUE_STREAM, CONSUMER)
        if existing.config.filter_subject:
            # An earlier version's consumer (one filtered subject). Its jobs stay in the
            # stream and the new consumer delivers them again; the run lock keeps a run that
            # is running from running twice.
            log.info("replacing the run queue consumer of an earlier version")
            await js.delete_consumer(settings.RUNS_QUEUE_STREAM, CONSUMER)
            await js.add_consumer(settings.RUNS_QUEUE_STREAM, wanted)
        else:
            log.warning(
                "run queue consumer exists with a different configuration; using it as it is",
                error=str(exc) or repr(exc),
            )


async def enqueue(
    js: JetStreamContext,
    settings: Settings,
    run_id: uuid.UUID,
    key: str,
    thread_id: uuid.UUID | None = None,
) -> None:
    """Queue a job for the run; `key` dedups retries (e.g. `start`, `resume-2`) within two
    minutes. `thread_id`, the run's thread, lets the worker lock the thread with the run in one
    statement before the run is visible (`locks`). Raises `UnavailableError("NATS")` when
    JetStream did not acknowledge it."""
    job = (
        {"run": str(run_id)}
        if thread_id is None
        else {"run": str(run_id), "thread": str(thread_id)}
    )
    try:
        await js.publish(
            job_subject(settings, run_id),
            json.dumps(job).encode(),
            stream=settings.RUNS_QUEUE_STREAM,
            headers={"Nats-Msg-Id": f"{run_id}:{key}", **telemetry.nats_headers()},
        )
    except Exception as exc:  # whatever NATS said, the job is not queued
        raise UnavailableError(
            "NATS", f"the run queue did not take runs/{run_id} ({exc or type(exc).__name__})"
        ) from exc


async def jobs_by_run(js: JetStreamContext, settings: Settings) -> dict[uuid.UUID, int]:
    """How many jobs each run has in the queue (waiting, or delivered and not acknowledged)."""
    info = await js.stream_info(
        settings.RUNS_QUEUE_STREAM, subjects_filter=f"{_prefix(settings)}.*"
    )
    found = {}
    for subject, count in (info.state.subjects or {}).items():
        try:
            found[uuid.UUID(subject.rsplit(".", 1)[-1])] = count
        except ValueError:
            continue
    return found


async def has_job(js: JetStreamContext, settings: Settings, run_id: uuid.UUID) -> bool:
    """Whether the run has a job in the queue, asked for this run alone (exact)."""
    try:
        await js.get_last_msg(settings.RUNS_QUEUE_STREAM, job_subject(settings, run_id))
    except nats.js.errors.NotFoundError:
        return False
    return True


def parse_job(payload: bytes) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """The job's run (None: malformed) and its thread (None: not given, as earlier versions)."""
    try:
        job = json.loads(payload)
        run_id = uuid.UUID(job["run"])
    except (ValueError, KeyError, TypeError):
        return None, None
    try:
        return run_id, uuid.UUID(job["thread"])
    except (ValueError, KeyError, TypeError):
        return run_id, None


async def request_cancel(nc: NATS, run_id: uuid.UUID, reason: str, timeout: float) -> bool:
    """Ask the worker running `run_id` to stop it; True when a worker confirmed."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    try:
        await nc.request(cancel_subject(run_id), reason.encode(), timeout=timeout)
    except (NoRespondersError, NatsTimeout, TimeoutError):
        return False
    return True
