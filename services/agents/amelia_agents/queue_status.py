"""The run queue as its workers see it (GetRunQueue; Temporal's task queue and pending activities).

Three sources, each the authority on its part:

- JetStream's consumer `agent-workers`: jobs waiting (the depth), delivered and not acknowledged
  (in flight), redelivered, and the worker loops polling for a job right now;
- the `runs` table: QUEUED runs waiting for a worker and the oldest one's wait, those waiting
  behind their thread's run (`multitask`) counted apart, RUNNING runs and the worker loop that picked each
  up last;
- PostgreSQL's lock table: a worker executing a run holds the run's advisory lock (`locks`) on a
  connection of its own, and checks the run's status on it every second — so the lock says
  whether a live worker still has the run (a killed worker's lock dies with its connection) and
  that connection's last statement time is the worker's heartbeat.

A RUNNING run that no worker holds lost its worker: JetStream gives its job to another worker
once the ack wait has passed since the last heartbeat (`lease_expire_time`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2
from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from amelia.v1 import agents_pb2
from amelia_agents import convert, queue
from amelia_agents.locks import run_lock_key
from amelia_common.errors import NATS, UnavailableError
from amelia_common.settings import Settings

MAX_IN_FLIGHT = 200

_QUEUED = text(
    "SELECT count(*) FILTER (WHERE queued_behind IS NULL), "
    "min(coalesce(queued_time, create_time)) FILTER (WHERE queued_behind IS NULL), now(), "
    "count(*) FILTER (WHERE queued_behind IS NOT NULL) FROM runs "
    "WHERE status = 'QUEUED' AND (queue = :queue OR queue IS NULL)"
)
_RUNNING = text(
    "SELECT id, agent_id, workflow, worker, attempt, start_time FROM runs "
    "WHERE status = 'RUNNING' AND (queue = :queue OR queue IS NULL) "
    "ORDER BY start_time NULLS LAST, id LIMIT :limit"
)
# The sessions holding advisory locks, by key (a bigint key is split into classid and objid),
# with the start of their last statement: a worker's status check, every second.
_HOLDERS = text(
    "SELECT (l.classid::bigint << 32) | l.objid::bigint, a.query_start "
    "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND ((l.classid::bigint << 32) | l.objid::bigint) = ANY(:keys)"
)


@dataclass
class _Lease:
    run_id: uuid.UUID
    target: str
    worker: str
    attempt: int
    start_time: datetime | None
    heartbeat: datetime | None
    held: bool


async def run_queue(
    settings: Settings, js: JetStreamContext, sessions: async_sessionmaker[AsyncSession]
) -> agents_pb2.GetRunQueueResponse:
    """The queue now. `UnavailableError("NATS")` when JetStream does not answer; PostgreSQL's
    errors as they are (the service maps them to UNAVAILABLE naming PostgreSQL)."""
    try:
        info = await js.consumer_info(settings.RUNS_QUEUE_STREAM, queue.CONSUMER)
    except Exception as exc:  # whatever NATS said, the queue cannot be read
        raise UnavailableError(
            NATS, f"the run queue cannot be read ({exc or type(exc).__name__})"
        ) from exc
    async with sessions() as s:
        queued, oldest, read_time, behind = (
            await s.execute(_QUEUED, {"queue": settings.RUNS_QUEUE_STREAM})
        ).one()
        running = (
            await s.execute(_RUNNING, {"queue": settings.RUNS_QUEUE_STREAM, "limit": MAX_IN_FLIGHT})
        ).all()
        keys = [run_lock_key(row.id) for row in running]
        holders: dict[int, datetime | None] = {}
        if keys:
            holders = {key: beat for key, beat in (await s.execute(_HOLDERS, {"keys": keys}))}
    ack_wait = timedelta(seconds=settings.RUN_ACK_WAIT_SECONDS)
    leases = [
        _Lease(
            run_id=row.id,
            target=f"workflows/{row.workflow}" if row.workflow else f"agents/{row.agent_id}",
            worker=row.worker or "",
            attempt=row.attempt,
            start_time=row.start_time,
            heartbeat=holders.get(run_lock_key(row.id)),
            held=run_lock_key(row.id) in holders,
        )
        for row in running
    ]
    response = agents_pb2.GetRunQueueResponse(
        queue=settings.RUNS_QUEUE_STREAM,
        waiting_jobs=info.num_pending or 0,
        in_flight_jobs=info.num_ack_pending or 0,
        redelivered_jobs=info.num_redelivered or 0,
        polling_workers=info.num_waiting or 0,
        queued_runs=queued,
        waiting_behind_runs=behind,
        ack_wait=_duration(ack_wait),
        read_time=_timestamp(read_time),
        in_flight=[_lease_to_proto(lease, ack_wait) for lease in leases],
        workers=_workers(leases, read_time, ack_wait),
    )
    if oldest is not None:
        response.oldest_queued_time.FromDatetime(oldest)
        response.oldest_queued_age.CopyFrom(_duration(max(read_time - oldest, timedelta(0))))
    return response


def _lease_to_proto(lease: _Lease, ack_wait: timedelta) -> agents_pb2.RunLease:
    found = agents_pb2.RunLease(
        run=convert.run_name(lease.run_id),
        target=lease.target,
        worker=lease.worker,
        attempt=lease.attempt,
        held=lease.held,
    )
    if lease.start_time is not None:
        found.start_time.FromDatetime(lease.start_time)
    if lease.heartbeat is not None:
        found.last_heartbeat_time.FromDatetime(lease.heartbeat)
        found.lease_expire_time.FromDatetime(lease.heartbeat + ack_wait)
    return found


def _workers(
    leases: list[_Lease], read_time: datetime, ack_wait: timedelta
) -> list[agents_pb2.QueueWorker]:
    """The worker processes (`host:pid`) named by the runs in flight. One is healthy while it
    holds a run and every run it holds heartbeat within the ack wait; one named only by runs
    it no longer holds has stopped."""
    by_name: dict[str, list[_Lease]] = {}
    for lease in leases:
        if lease.worker:
            by_name.setdefault(lease.worker.rsplit("/", 1)[0], []).append(lease)
    workers = []
    for name, mine in sorted(by_name.items()):
        held = [lease for lease in mine if lease.held]
        beats = [lease.heartbeat for lease in held if lease.heartbeat is not None]
        worker = agents_pb2.QueueWorker(
            name=name,
            busy_loops=len(held),
            healthy=bool(held) and len(beats) == len(held) and read_time - min(beats) < ack_wait,
        )
        if beats:
            worker.last_heartbeat_time.FromDatetime(max(beats))
        workers.append(worker)
    return workers


def _duration(value: timedelta) -> duration_pb2.Duration:
    found = duration_pb2.Duration()
    found.FromTimedelta(value)
    return found


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    found = timestamp_pb2.Timestamp()
    found.FromDatetime(value)
    return found
