"""Run webhooks: POST the run as JSON to the URL given at CreateRun when it pauses on a
question and once it has ended.

LangGraph Server's `webhook` on a run. The delivery owed is kept in the run's row
(`webhook_state` "pending", migration agents_0007), not in memory: a run that ends while the
agents service is down, or just before it is killed, is delivered after it starts again. A
durable JetStream consumer on the runs' end events would have done it too, but the end events
share their subjects with every token of every run (`runs/<uuid>`), so that consumer would read
them all; the row is written once at CreateRun and once per attempt.

Every agents process runs `Webhooks`: every POLL_SECONDS it claims the deliveries due of its
run queue's runs, as the reconciler looks after its queue's runs (an UPDATE over the partial
index of owed ones, `FOR UPDATE SKIP LOCKED`: the processes of a queue share them, each
once) and POSTs each in a task of its own — no run or worker waits for a receiver.
A delivery is due once the run's end event is in the log (`terminal_sequence` set), so a
receiver that reads the run's events already finds its end. Each pause is a delivery too
(LangGraph's run ends at an interrupt; ours is answered as the same run): due once the
question's `run.interrupted` is in the log (`question_sequence`), not made if the run has been
answered since; `webhook_state` stays "pending" until the end's delivery settles.

The claim counts the attempt and leases it for LEASE_SECONDS (longer than a POST may take): a
process killed mid-POST leaves it to be claimed again then, so a receiver may get a run twice
(at least once; the `X-Amelia-Delivery` header is the same each time, to recognise it).

A 2xx answer delivers it (`run.webhook.delivered`); an error or any other answer is due again
BACKOFF_SECONDS[attempt - 1] (1, 2, 4, 8 s) later and sent by the first look after that (up to
POLL_SECONDS late), MAX_ATTEMPTS POSTs in all, then the delivery has failed (`run.webhook.failed`, with the last answer). Redirects are not followed.

A run deleted while its delivery is owed — a rollback's stopped run (multitask), a run deleted
with its thread — keeps it: a trigger copies the row into `deleted_run_webhooks` in the
deleting transaction (migration agents_0008). Those are claimed, retried and told the same
way; the header `X-Amelia-Run-Deleted: true` says it is gone. The body always ends the run
(`as_deleted`): a rolled back run is already CANCELLED (`rolled back by runs/…`); one deleted
before it ended (QUEUED, RUNNING or PAUSED when its thread was deleted) is sent CANCELLED,
`deleted with its thread`, ended when it was deleted — else its receiver would wait for an end
that never comes. A run that ended before it was deleted is sent as it ended. A rolled back run
is delivered from its copy only (the live claim skips it: it is about to be deleted), so its
receiver hears of it once. The copy is deleted once settled.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import DateTime, TextClause, text

from amelia_agents import convert
from amelia_agents.lifecycle import RunEvents, question_id
from amelia_agents.models import TERMINAL_STATES, RunRow, RunState
from amelia_agents.periodic import Periodic
from amelia_agents.store import Store, now
from amelia_common.errors import InvalidArgumentError, check_json
from amelia_common.json_numbers import to_json
from amelia_common.logging import get_logger

log = get_logger("amelia.agents.webhooks")

MAX_URL_LENGTH = 2048
MAX_ATTEMPTS = 5
BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0)
POST_TIMEOUT_SECONDS = 10.0
LEASE_SECONDS = POST_TIMEOUT_SECONDS + 5.0
POLL_SECONDS = 1.0
CLAIM_LIMIT = 32
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

# A live run's delivery due: its end once the end is in the log, else its pause once the
# question is (and not told yet). `stop` names the delivery: 0 the end, else the pause's
# question_sequence; `webhook_attempts` counts the POSTs of that delivery only.
_STOP = "CASE WHEN terminal_sequence IS NOT NULL THEN 0 ELSE question_sequence END"
_CLAIM = text(
    f"""
    UPDATE runs SET webhook_attempts = CASE WHEN webhook_attempts_for = due.stop
                                            THEN webhook_attempts + 1 ELSE 1 END,
                    webhook_attempts_for = due.stop,
                    webhook_due = now() + make_interval(secs => :lease)
    FROM (
        SELECT id, {_STOP} AS stop FROM runs
        WHERE webhook_state = 'pending' AND queue = :queue AND NOT rolled_back
          AND (webhook_due IS NULL OR webhook_due <= now())
          AND (terminal_sequence IS NOT NULL
               OR (status = 'PAUSED' AND question_sequence IS NOT NULL
                   AND question_sequence IS DISTINCT FROM webhook_paused_told))
        ORDER BY webhook_due NULLS FIRST
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE runs.id = due.id
    RETURNING runs.id, runs.webhook_attempts, due.stop
    """
)
_SETTLE = text(
    "UPDATE runs SET webhook_state = :state, webhook_due = NULL "
    "WHERE id = :id AND webhook_state = 'pending'"
)
# A pause's delivery settled: the run stays owed its end's.
_SETTLE_PAUSE = text(
    "UPDATE runs SET webhook_paused_told = :stop, webhook_due = NULL "
    "WHERE id = :id AND webhook_state = 'pending'"
)
_RETRY = text(
    "UPDATE runs SET webhook_due = :due "
    "WHERE id = :id AND webhook_state = 'pending' AND webhook_attempts_for = :stop"
)

# The same for runs deleted while owed one (`deleted_run_webhooks`, all of them pending).
_CLAIM_DELETED = text(
    """
    UPDATE deleted_run_webhooks SET webhook_attempts = webhook_attempts + 1,
                                    webhook_due = now() + make_interval(secs => :lease)
    WHERE run_id IN (
        SELECT run_id FROM deleted_run_webhooks
        WHERE queue = :queue AND (webhook_due IS NULL OR webhook_due <= now())
        ORDER BY webhook_due NULLS FIRST
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING run_id, webhook_attempts, 0
    """
)
_SETTLE_DELETED = text("DELETE FROM deleted_run_webhooks WHERE run_id = :id")
_RETRY_DELETED = text(
    "UPDATE deleted_run_webhooks SET webhook_due = :due WHERE run_id = :id AND :stop = 0"
)
# The deleted run's row as it was (the runs table's own column types, back from its copy)
# and when it was deleted.
_READ_DELETED = text(
    "SELECT (jsonb_populate_record(NULL::runs, run)).*, delete_time AS deleted_at "
    "FROM deleted_run_webhooks WHERE run_id = :id"
).columns(**{c.name: c.type for c in RunRow.__table__.c}, deleted_at=DateTime(timezone=True))
DELETED_WITH_THREAD = "deleted with its thread"
_ENDED = {state.value for state in TERMINAL_STATES}


@dataclass(frozen=True)
class _Owed:
    """Where a kind of owed delivery is kept: the runs' rows, or deleted runs' copies."""

    claim: TextClause
    settle: TextClause
    retry: TextClause
    deleted: bool


_LIVE = _Owed(_CLAIM, _SETTLE, _RETRY, deleted=False)
_DELETED = _Owed(_CLAIM_DELETED, _SETTLE_DELETED, _RETRY_DELETED, deleted=True)


def check_url(url: str, field: str = "run.webhook") -> str:
    """`url` if it is an http or https URL with a host; INVALID_ARGUMENT naming `field` and
    saying why if not (the one check of every webhook: runs, reruns, forks, crons)."""
    check_json(url, field)  # no NUL: PostgreSQL's text cannot hold it
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgumentError(
            f"{field} is {len(url)} characters long; at most {MAX_URL_LENGTH}"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise InvalidArgumentError(f"{field} {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host or any(c.isspace() for c in url):
        raise InvalidArgumentError(
            f"{field} must be an http or https URL with a host, like "
            f"'https://example.com/hooks/run', got {url!r}"
        )
    return url


def attach(row: RunRow, url: str, field: str = "run.webhook") -> None:
    """Owe `row`'s webhook to `url` (checked, as the request's `field`) once it ends; nothing
    for an empty `url`."""
    if url:
        row.webhook = check_url(url, field)
        row.webhook_state = PENDING
        row.webhook_attempts = 0


def as_deleted(row: RunRow, deleted_at: datetime) -> RunRow:
    """The run a deleted run's receiver is told of: as it ended, or — deleted before it
    ended (with its thread) — CANCELLED then, saying why: a receiver waits for an end."""
    if row.status not in _ENDED:
        row.status = RunState.CANCELLED.value
        row.error = DELETED_WITH_THREAD
        row.end_time = deleted_at
        row.interrupt = None
    return row


def body(row: RunRow) -> bytes:
    """The bare Run as JSON (what GET /v1/runs/{run} gives inside its `run` field)."""
    return json.dumps(
        to_json(convert.run_to_proto(row)), separators=(",", ":"), ensure_ascii=False
    ).encode()


class Webhooks:
    """This process's deliveries: claimed from the runs' rows, each POSTed in a task."""

    def __init__(self, store: Store, events: RunEvents, queue: str) -> None:
        self.store = store
        self.queue = queue
        self.events = events
        self.client = httpx.AsyncClient(timeout=POST_TIMEOUT_SECONDS, follow_redirects=False)
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = Periodic(
            "webhooks",
            POLL_SECONDS,
            self.deliver_due,
            log,
            "cannot look for webhooks to deliver",
        )

    def start(self) -> None:
        self.loop.start()

    async def stop(self) -> None:
        await self.loop.stop()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()

    async def deliver_due(self) -> None:
        """Claim the deliveries due and start each (one statement for the runs, one for the
        deleted runs, no transaction around them: two round trips a second when nothing is
        owed)."""
        params = {"lease": LEASE_SECONDS, "limit": CLAIM_LIMIT, "queue": self.queue}
        for owed in (_LIVE, _DELETED):
            async with self.store.autocommit.connect() as conn:
                claimed = (await conn.execute(owed.claim, params)).all()
            for rid, attempt, stop in claimed:
                task = asyncio.create_task(
                    self.deliver(owed, rid, attempt, stop), name=f"webhook runs/{rid}"
                )
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def deliver(self, owed: _Owed, rid: uuid.UUID, attempt: int, stop: int = 0) -> None:
        """POST the run once (the `attempt`th of its delivery `stop`: 0 its end, else the pause
        whose question has that sequence), then record how it went; an error recording it
        leaves the delivery to be claimed again when its lease ends."""
        try:
            await self._deliver(owed, rid, attempt, stop)
        except Exception as exc:  # noqa: BLE001 - claimed again after LEASE_SECONDS
            log.warning("webhook delivery not recorded", run=convert.run_name(rid), error=repr(exc))

    async def _read(self, owed: _Owed, rid: uuid.UUID) -> RunRow | None:
        if not owed.deleted:
            return await self.store.get_run(rid)
        async with self.store.autocommit.connect() as conn:
            found = (await conn.execute(_READ_DELETED, {"id": rid})).one_or_none()
        if found is None:
            return None
        fields = dict(found._mapping)
        deleted_at = fields.pop("deleted_at")
        return as_deleted(RunRow(**fields), deleted_at)

    async def _deliver(self, owed: _Owed, rid: uuid.UUID, attempt: int, stop: int) -> None:
        row = await self._read(owed, rid)
        if row is None or not row.webhook:
            return  # deleted since: its copy in deleted_run_webhooks is delivered instead
        if stop and (row.status != RunState.PAUSED.value or row.question_sequence != stop):
            return  # answered (or cancelled) since: its next stop is told instead
        url = row.webhook
        delivery = question_id(row) if stop else f"{rid}:end"
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "amelia-webhooks",
            "X-Amelia-Run": convert.run_name(rid),
            "X-Amelia-Delivery": delivery,
            "X-Amelia-Attempt": str(attempt),
        }
        if owed.deleted:
            headers["X-Amelia-Run-Deleted"] = "true"
        try:
            answer = await self.client.post(url, content=body(row), headers=headers)
            code: int | None = answer.status_code
            outcome = f"HTTP {code}"
        except httpx.HTTPError as exc:
            code, outcome = None, f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
        data: dict[str, Any] = {"url": url, "attempts": attempt, "delivery": delivery}
        if code is not None and 200 <= code < 300:
            data["status_code"] = code
            await self._tell(row, "run.webhook.delivered", data)
            await self._settle(owed, rid, stop, DELIVERED)
            return
        data["error"] = outcome
        if attempt >= MAX_ATTEMPTS:
            log.warning("webhook failed", run=convert.run_name(rid), url=url, error=outcome)
            await self._tell(row, "run.webhook.failed", data)
            await self._settle(owed, rid, stop, FAILED)
            return
        due = now() + timedelta(seconds=BACKOFF_SECONDS[attempt - 1])
        log.info("webhook to retry", run=convert.run_name(rid), attempt=attempt, error=outcome)
        async with self.store.autocommit.connect() as conn:
            await conn.execute(owed.retry, {"id": rid, "due": due, "stop": stop})

    async def _settle(self, owed: _Owed, rid: uuid.UUID, stop: int, state: str) -> None:
        settle, params = owed.settle, {"id": rid, "state": state}
        if stop:
            settle, params = _SETTLE_PAUSE, {"id": rid, "stop": stop}
        async with self.store.autocommit.connect() as conn:
            await conn.execute(settle, params)

    async def _tell(self, row: RunRow, event_type: str, data: dict[str, Any]) -> None:
        """The outcome's event on the run's subject (its id fixed by the delivery: told once,
        even if the delivery is made again after a crash before it was recorded). A delivery
        is recorded even if NATS cannot take its event (logged)."""
        event_id = f"{data['delivery']}:{event_type}"
        try:
            await self.events.publish(self.events.event(row, event_type, data, event_id=event_id))
        except Exception as exc:  # noqa: BLE001 - the delivery stands without its event
            log.warning("webhook event not published", event=event_type, error=repr(exc))


def start_webhooks(store: Store, events: RunEvents, queue: str) -> Webhooks:
    """Deliver the webhooks of the runs of `queue` (the process's RUNS_QUEUE_STREAM)."""
    hooks = Webhooks(store, events, queue)
    hooks.start()
    return hooks
