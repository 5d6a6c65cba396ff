"""Events written in the transaction that makes the change they tell of (a transactional outbox).

Publishing an event inside a database transaction and rolling the transaction back when
JetStream does not acknowledge it in time is not enough: an unacknowledged publish may still be
stored once NATS answers again, and the log then tells of a change that was never made (QA,
session 21: a `document.deleted` for a document that still exists). Here the event is a row of
the outbox table, written in the change's own transaction, so it exists exactly when the change
does; after the commit it is published and its row deleted.

- `add(session, event)`: the event, checked as a publish checks it (a bad one fails the
  change), into the outbox in `session`'s transaction.
- `deliver()`: after the commit, publish what the outbox holds, in order, and return. With NATS
  away it returns once a publish gives up (EVENTS_PUBLISH_TIMEOUT_SECONDS; at once when NATS is
  not connected) and the events stay queued; the change is made either way.
- `start()`: a loop that delivers every `interval` seconds, for events left by a failed
  publish, or by a process that died between its commit and its publish.

One deliverer at a time across every process on the database (a transaction-scoped advisory
lock) publishes the rows in commit order of each document — a later change of a thing waits for
its earlier one's lock — so the log has each thing's events in the order they happened. A row
is deleted only after JetStream acknowledged its event; a publish that timed out is sent again
with the same id, which JetStream stores once within its dedup window. An event queued longer
ago than half that window (EVENTS_DEDUP_WINDOW_SECONDS) may have been stored by an earlier pass
whose row survived it — PostgreSQL lost before the row's delete, a process dead between the
acknowledgement and the commit — beyond JetStream's memory of its id; such an event is first
looked for in the log (its type and subject, from a window before it was queued) and not sent
again if it is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import zlib

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from amelia.v1 import events_pb2
from amelia_common.db import transaction
from amelia_common.event_names import InvalidEventError
from amelia_common.eventlog.envelope import EventLogUnavailableError, TooManyReadersError
from amelia_common.eventlog.log import EventLog
from amelia_common.eventlog.reader import StartAt
from amelia_common.logging import get_logger

log = get_logger("amelia.eventlog.outbox")

# Events taken from the outbox at a time, and at most this many batches a pass (the loop's next
# pass takes the rest of a backlog), so a caller's wait is bounded.
BATCH = 256
PASS_BATCHES = 8


class Outbox:
    """The outbox table `table` (seq bigserial, event bytea) of one service's database."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        event_log: EventLog,
        table: str,
        *,
        interval: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.event_log = event_log
        self.table = table
        self.interval = interval
        self._lock_key = zlib.crc32(f"outbox:{table}".encode())
        # Deliveries asked for, and how many of them a finished pass has covered: a caller
        # waits for the first pass that began after it asked, not for every pass after it.
        self._asked = 0
        self._covered = 0
        self._pass_ended = asyncio.Event()
        self._delivering: asyncio.Task[None] | None = None
        self._kicked: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._failing = False

    async def add(self, session: AsyncSession, event: events_pb2.Event) -> None:
        """Queue `event` in `session`'s transaction (its id, time and source filled in now)."""
        prepared = self.event_log.prepare(event)
        await session.execute(
            text(f"INSERT INTO {self.table} (event) VALUES (:event)"),
            {"event": prepared.event.SerializeToString()},
        )

    async def deliver(self) -> None:
        """Publish what the outbox holds now: returns once a pass begun after this call ended
        (an event committed before the call is among what it published, unless another process
        was publishing the outbox, or more than a pass's share was waiting: then the loop takes
        it). Never raises; what cannot be published now stays queued for the loop."""
        self._asked += 1
        ticket = self._asked
        if self._delivering is None or self._delivering.done():
            self._delivering = asyncio.create_task(self._deliver_while_asked())
        delivering = self._delivering
        while self._covered < ticket and not delivering.done():
            ended = asyncio.ensure_future(self._pass_ended.wait())
            try:
                await asyncio.wait({delivering, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()

    def kick(self) -> None:
        """`deliver()` without waiting for it (for a change whose caller need not wait: an
        indexing batch's progress)."""
        task = asyncio.create_task(self.deliver())
        self._kicked.add(task)
        task.add_done_callback(self._kicked.discard)

    def start(self) -> None:
        self._loop = asyncio.create_task(self._every_interval(), name=f"outbox {self.table}")

    async def stop(self) -> None:
        for task in (self._loop, self._delivering, *self._kicked):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def pending(self) -> int:
        """Events waiting to be published."""
        async with transaction(self.sessions) as session:
            count = await session.scalar(text(f"SELECT count(*) FROM {self.table}"))
        return int(count or 0)

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.deliver()

    async def _deliver_while_asked(self) -> None:
        """Passes while deliveries are asked for; one that fails ends them all (the callers
        return, the loop tries again)."""
        while self._covered < self._asked:
            covering = self._asked
            try:
                published = await self._publish_batches()
            except Exception as exc:  # noqa: BLE001 - PostgreSQL away: the loop tries again
                self._say_failing(f"cannot read the event outbox: {exc!r}")
                published = False
            self._covered = covering if published else self._asked
            self._pass_ended.set()
            self._pass_ended = asyncio.Event()

    async def _publish_batches(self) -> bool:
        """One pass: the outbox's events in order, batch after batch, until it is empty or
        PASS_BATCHES were published (True), NATS gives up on one, or another process holds the
        outbox (False)."""
        for _ in range(PASS_BATCHES):
            if not self.event_log.nc.is_connected:  # not waited for here: the loop comes back
                self._say_failing("NATS is not connected")
                return False
            async with transaction(self.sessions) as session:
                locked = await session.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": self._lock_key}
                )
                if not locked:
                    return False
                rows = (
                    await session.execute(
                        text(f"SELECT seq, event FROM {self.table} ORDER BY seq LIMIT :n"),
                        {"n": BATCH},
                    )
                ).all()
                done, complete = await self._publish(rows)
                if done:
                    await session.execute(
                        text(f"DELETE FROM {self.table} WHERE seq = ANY(:done)"), {"done": done}
                    )
            if not complete:
                return False
            if self._failing:
                self._failing = False
                log.info("event outbox delivered again", table=self.table)
            if len(rows) < BATCH:
                return True
        return True

    async def _publish(self, rows: list[tuple[int, bytes]]) -> tuple[list[int], bool]:
        """Publish `rows` in order: the seqs whose events JetStream stored, and whether all were."""
        done: list[int] = []
        logged = _LoggedIds(self.event_log)
        for seq, body in rows:
            event = events_pb2.Event.FromString(body)
            try:
                if await logged.holds(event):
                    log.info("event already in the log, not sent again", event_id=event.id)
                else:
                    await self.event_log.publish_event(event)
            except (EventLogUnavailableError, TooManyReadersError) as exc:
                self._say_failing(f"cannot publish from the event outbox: {exc.message}")
                return done, False
            except InvalidEventError as exc:
                # Checked when queued, so only a limit lowered since: held, it would stop
                # every later event.
                log.error("event dropped from the outbox", event_id=event.id, error=str(exc))
            done.append(seq)
        return done, True

    def _say_failing(self, why: str) -> None:
        if not self._failing:
            self._failing = True
            log.warning("events wait in the outbox", table=self.table, error=why)


class _LoggedIds:
    """Whether an old outbox event is in the log already, for one pass: the ids of each type and
    subject stored since a dedup window before the first such event was queued, read once."""

    def __init__(self, event_log: EventLog) -> None:
        self.event_log = event_log
        self.window = dt.timedelta(seconds=event_log.settings.EVENTS_DEDUP_WINDOW_SECONDS)
        self._ids: dict[tuple[str, str], set[str]] = {}

    async def holds(self, event: events_pb2.Event) -> bool:
        """False at once for an event queued within half the window (JetStream still knows
        its id, if an earlier pass stored it); else whether the log holds its id. The start
        is a whole window before it was queued, for clocks that disagree with NATS's."""
        queued = event.time.ToDatetime(tzinfo=dt.UTC)
        if dt.datetime.now(dt.UTC) - queued < self.window / 2:
            return False
        key = (event.type, event.subject)
        if key not in self._ids:
            start = StartAt.at_time(queued - self.window)
            retry_for = self.event_log.settings.EVENTS_PUBLISH_TIMEOUT_SECONDS
            reader = self.event_log.read(
                [event.type], event.subject, start, follow=False, retry_for=retry_for
            )
            async with reader:
                self._ids[key] = {stored.id async for stored in reader}
        return event.id in self._ids[key]
