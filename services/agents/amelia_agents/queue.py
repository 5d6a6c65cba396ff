"""The run queue: a JetStream work-queue stream, and the core-NATS cancel subjects.

Subjects (the only place they are defined):

- `amelia.jobs.<RUNS_QUEUE_STREAM>` — work queue (stream `RUNS_QUEUE_STREAM`, work-queue
  retention, file storage). Each message is `{"run": "<uuid>"}`; the durable pull consumer `agent-workers` is
  shared by every worker, so each message goes to one worker at a time. A worker heartbeats
  with `in_progress()` while it runs (the ack wait is `RUN_ACK_WAIT_SECONDS`) and acks when the
  run is paused or finished; a worker that dies stops heartbeating, and JetStream redelivers the
  message to another worker after the ack wait.
- `amelia.runs.<uuid>.cancel` — request/reply: CancelRun asks; the worker executing the run
  (subscribed while it does) stops it, publishes `run.cancelled` and replies. No responder
  means no worker has it, so CancelRun publishes `run.cancelled` itself.
"""

from __future__ import annotations

import json
import uuid

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.agents.queue")

CONSUMER = "agent-workers"


def queue_subject(settings: Settings) -> str:
    return f"amelia.jobs.{settings.RUNS_QUEUE_STREAM}"


def cancel_subject(run_id: uuid.UUID) -> str:
    return f"amelia.runs.{run_id}.cancel"


def consumer_config(settings: Settings) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=CONSUMER,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=settings.RUN_ACK_WAIT_SECONDS,
        # Deliveries are bounded by RUN_MAX_ATTEMPTS in the worker, which records why.
        max_deliver=-1,
        max_ack_pending=-1,
        filter_subject=queue_subject(settings),
    )


async def ensure_queue(js: JetStreamContext, settings: Settings) -> None:
    """Create the work-queue stream and the shared consumer (or bring them up to date)."""
    config = api.StreamConfig(
        name=settings.RUNS_QUEUE_STREAM,
        subjects=[queue_subject(settings)],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        duplicate_window=120,
    )
    try:
        await js.stream_info(settings.RUNS_QUEUE_STREAM)
    except Exception:  # noqa: BLE001 - not found: create it
        await js.add_stream(config)
    else:
        await js.update_stream(config)
    try:
        await js.add_consumer(settings.RUNS_QUEUE_STREAM, consumer_config(settings))
    except Exception as exc:  # noqa: BLE001 - exists with other settings: keep using it
        log.warning(
            "run queue consumer exists with a different configuration; using it as it is",
            error=str(exc) or repr(exc),
        )


async def enqueue(js: JetStreamContext, settings: Settings, run_id: uuid.UUID, key: str) -> None:
    """Queue the run; `key` dedups retries (e.g. `start`, `resume-2`) within two minutes."""
    await js.publish(
        queue_subject(settings),
        json.dumps({"run": str(run_id)}).encode(),
        stream=settings.RUNS_QUEUE_STREAM,
        headers={"Nats-Msg-Id": f"{run_id}:{key}"},
    )


def parse_job(payload: bytes) -> uuid.UUID | None:
    try:
        return uuid.UUID(json.loads(payload)["run"])
    except (ValueError, KeyError, TypeError):
        return None


async def request_cancel(nc: NATS, run_id: uuid.UUID, reason: str, timeout: float) -> bool:
    """Ask the worker running `run_id` to stop it; True when a worker confirmed."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    try:
        await nc.request(cancel_subject(run_id), reason.encode(), timeout=timeout)
    except (NoRespondersError, NatsTimeout, TimeoutError):
        return False
    return True
