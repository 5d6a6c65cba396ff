"""`PublishPipeline`: events written to NATS as they come, their acknowledgements awaited together.

`EventLog.publish_event` waits for JetStream's acknowledgement before the next event can be
sent: one round trip per event. A run's tokens (and a PublishEvents batch) need not wait: each
event is written to the connection at once, in order, and the acknowledgements are collected
later (`flush`), so a burst of N events costs about one round trip instead of N.

Why the order and the exactly-once guarantees still hold:

- Events are written one after the other on one connection, so JetStream receives and stores
  them in that order; what a dying connection loses is a suffix of what was written.
- An event whose acknowledgement will not come (the connection it was written on is gone, an
  error, or EVENTS_PUBLISH_TIMEOUT_SECONDS passed) is published again the ordinary way
  (`EventLog.store(..., written=True)`), before anything after it is settled, with the same
  `Nats-Msg-Id`: stored once, at its first sequence if it had arrived.
- Whether an event that could not be stored in time may be in the log is known by one
  mechanism, `EventLog.store`'s: an event written to NATS once (here, or by its retries) and
  not acknowledged "may or may not be stored" (`PublishFailedError.sent`), whatever the state
  of the connection since — a frozen server stores what it had in its socket buffer once it
  runs again (QA s26: batches answered "not stored" were in the log). Only an event never
  written is "not stored". A batch that fails says which of its events are which
  (`BatchUnavailableError`), with the ids of those that may be stored: publishing them again
  with those ids is safe.
- When the connection changed (a reconnect) since the events in flight were written, or is down,
  those are settled before the next event is written, so a later event can never be stored
  ahead of an earlier one that was lost with the old connection.

The one order JetStream itself could break — it refusing an event with a transient error and
accepting the next one written right after it — does not happen on a single server without the
connection dropping.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js import api

from amelia.v1 import events_pb2
from amelia_common import telemetry
from amelia_common.event_names import InvalidEventError
from amelia_common.eventlog.envelope import EventLogUnavailableError, ReusedIdError
from amelia_common.logging import get_logger

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    # For annotations only: a pipeline is one EventLog's write path (log.py makes and imports
    # it) and calls back into that log's prepare/store, so the two modules name each other.
    from amelia_common.eventlog.log import EventLog, Prepared

log = get_logger("amelia.eventlog")

# Events written and not yet acknowledged, at most: past it, `submit` settles the oldest first.
DEFAULT_WINDOW = 256
# A client's batch (PublishEvents) keeps at most this many characters of event ids in flight
# (and at most DEFAULT_WINDOW events): a batch that fails lists the ids of the events in flight
# (they may or may not be stored) in its answer, and gRPC's trailers hold 8 KiB at most. 2,048
# characters are 62 ids of the 32 characters the service gives (15 of 128, the longest).
ANSWER_IDS_CHARS = 2048


class PublishFailedError(EventLogUnavailableError):
    """An event NATS did not store within EVENTS_PUBLISH_TIMEOUT_SECONDS (or did not take).

    `sent`: it was written to NATS at least once, so it may or may not be stored (a frozen
    server stores what it has in its socket buffer when it runs again); else it never left
    this process and is not stored. Publishing it again with the same id is safe either way.
    `reason`: why, briefly ("NATS is unreachable for 10s").
    """

    def __init__(self, detail: str, *, sent: bool, reason: str) -> None:
        super().__init__(detail)
        self.sent = sent
        self.reason = reason


class BatchUnavailableError(EventLogUnavailableError):
    """Events of a batch not all stored in time: the first `stored` are stored (or refused for
    an id reused, `reused` of them), the `unknown` after them (their ids, in order) were sent
    and not acknowledged, so they may or may not be stored, and the `not_stored` after those
    were never sent. `metadata` is that as the ErrorInfo of the answer carries it."""

    def __init__(
        self,
        detail: str,
        *,
        stored: int,
        unknown: list[str],
        not_stored: int,
        reused: int = 0,
    ) -> None:
        super().__init__(detail)
        self.stored = stored
        self.unknown = unknown
        self.not_stored = not_stored
        self.reused = reused

    @classmethod
    def of(
        cls,
        batch: list[Prepared],
        settled: int,
        unknown: list[Prepared],
        cause: EventLogUnavailableError,
        reused: int,
        dedup_window: float,
    ) -> BatchUnavailableError:
        """The answer for `batch`, whose first `settled` events were settled and the `unknown`
        after them sent and given up on, when `cause` stopped it."""
        total = len(batch)
        first, after = settled, settled + len(unknown)
        ids = [item.event.id for item in unknown]
        reason = cause.reason if isinstance(cause, PublishFailedError) else cause.detail
        said: list[str] = []
        if first:
            refused = f" ({reused} of them refused: their ids are stored with other content)"
            said.append(f"events[0:{first}] are stored" + (refused if reused else ""))
        if ids:
            listed = ", ".join(ids) if len(ids) <= 5 else "in the ErrorInfo metadata `ids`"
            said.append(
                f"events[{first}:{after}] were sent to NATS JetStream but not acknowledged "
                f"({reason}), so they may or may not be stored (ids: {listed})"
            )
        if after < total:
            if ids:
                said.append(f"events[{after}:{total}] were never sent to NATS")
            elif first:
                said.append(f"events[{after}:{total}] were never sent to NATS ({reason})")
            else:
                said.append(
                    f"the batch's {total} events are not stored: they were never sent to NATS "
                    f"({reason})"
                )
        if ids:
            advice = (
                f"publish events[{first}:] again with the same ids (JetStream drops a repeat "
                f"within EVENTS_DEDUP_WINDOW_SECONDS, {dedup_window:g}s, and a stored one is "
                "answered as stored)"
            )
        elif first:
            advice = f"publish events[{first}:] again"
        else:
            advice = "publish them again"
        return cls(
            "; ".join(said) + "; " + advice,
            stored=first,
            unknown=ids,
            not_stored=total - after,
            reused=reused,
        )

    def metadata(self) -> dict[str, str]:
        return {
            "stored": str(self.stored),
            "unknown": str(len(self.unknown)),
            "ids": ",".join(self.unknown),
            "notStored": str(self.not_stored),
        }


# While waiting for an acknowledgement, how often to check the connection it depends on.
_ACK_POLL_SECONDS = 0.25


# A publish span's attributes (OpenTelemetry messaging conventions).
PUBLISH_SPAN_ATTRIBUTES = {
    "messaging.system": "nats",
    "messaging.operation.name": "publish",
    "messaging.operation.type": "send",
}


@dataclass
class _InFlight:
    prepared: Prepared
    ack: asyncio.Future[api.PubAck]
    written_at: float
    generation: int  # the connection it was written on (nats-py's reconnect count)


class PublishPipeline:
    """Publishes events in order without a round trip each; `flush` returns them stored.

    Use one pipeline per ordered flow (a run's pick-up, a batch) and `await flush()` at its
    end: an event is durable only once `flush` (or a `submit` that had to settle the window)
    returned without raising. Errors are `EventLog.publish_event`'s: `InvalidEventError` from
    `submit` for a bad envelope (nothing written), `EventLogUnavailableError` from `submit` or
    `flush` when NATS did not store an event in time — the events before it are stored, and
    publishing the same events again (same ids) stores each once. A client's event whose id is
    already stored with other content (`EventLog.stored_before`) does not stop the others:
    `flush` settles them all, then raises `ReusedIdError` naming every such event.
    """

    def __init__(self, event_log: EventLog, *, window: int = DEFAULT_WINDOW) -> None:
        self.log = event_log
        self.window = max(1, window)
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        self._stored: list[events_pb2.Event] = []
        self._reused: list[ReusedIdError] = []
        self._generation = -1
        # Inside a trace: one PRODUCER span from the first event written until all are stored
        # (a span per event would double a run's spans: one per token).
        self._span: Span | None = None
        self._written = 0
        # One settling at a time: `settle_written` may be awaited by another task (a pick-up's
        # checkpointer) while the flow that submits goes on writing.
        self._settling = asyncio.Lock()
        # Events were written and given up on (a write failed, or `abandon` found some still in
        # flight): some may never be stored, so `settle_written` can no longer say they were.
        self._given_up = False
        # Those events (written, not acknowledged, given up on), in order: they may or may not
        # be stored (`BatchUnavailableError`).
        self.unknown: list[Prepared] = []

    @property
    def settled(self) -> int:
        """Events settled since the last `flush`: stored, or refused for a reused id."""
        return len(self._stored) + len(self._reused)

    @property
    def reused_ids(self) -> int:
        """Of those, events refused for an id already stored with other content."""
        return len(self._reused)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def submit(
        self, event: events_pb2.Event, *, from_client: bool = False, data_checked: bool = False
    ) -> None:
        """Check `event` and write it to NATS now; its acknowledgement is awaited by `flush`.
        (`from_client`, `data_checked`: as `EventLog.prepare`.)"""
        await self.write(
            self.log.prepare(event, from_client=from_client, data_checked=data_checked)
        )

    async def write(self, prepared: Prepared) -> None:
        """Write an event `EventLog.prepare` checked; its acknowledgement is awaited by `flush`."""
        async with self._settling:
            try:
                await self._write(prepared)
            except BaseException:
                self._given_up = True
                raise

    async def settle_written(self) -> None:
        """Return once every event written so far is stored (raising as `flush` does when one
        could not be), the flow going on meanwhile: what must not be recorded before the events
        that tell of it are in the log — a run's node's result, after its tokens — waits here."""
        async with self._settling:
            if self._given_up:
                raise PublishFailedError(
                    "events of this flow were given up on before NATS acknowledged them, so "
                    "they may or may not be stored",
                    sent=True,
                    reason="given up on before NATS acknowledged them",
                )
            await self._settle(len(self._in_flight))

    async def _write(self, prepared: Prepared) -> None:
        if self._span is None:
            self._span = telemetry.start_producer_span("publish events", PUBLISH_SPAN_ATTRIBUTES)
        self._written += 1
        nc = self.log.nc
        # Checked again after every wait: the connection may change while the window settles.
        while self._in_flight:
            if nc.stats["reconnects"] != self._generation or not nc.is_connected:
                await self._settle(len(self._in_flight))
            elif len(self._in_flight) >= self.window:
                await self._settle(1)
            else:
                break
        generation = nc.stats["reconnects"]
        if not nc.is_connected or self.log.buffer_full():
            # The ordinary path waits for the connection (or refuses when the buffer is full).
            await self._store_unwritten(prepared)
            return
        self._generation = generation
        try:
            ack = await self.log.js.publish_async(
                prepared.nats_subject,
                prepared.payload,
                stream=self.log.settings.EVENTS_STREAM,
                headers={"Nats-Msg-Id": prepared.dedup_id},
            )
        except (nats.errors.Error, nats.js.errors.Error):
            # Not written (the connection went away meanwhile): the ordinary path retries.
            await self._store_unwritten(prepared)
            return
        self._in_flight.append(_InFlight(prepared, ack, time.monotonic(), generation))
        stats = self.log.stats
        stats.waiting += 1
        stats.waiting_peak = max(stats.waiting_peak, stats.waiting)

    async def flush(self) -> list[events_pb2.Event]:
        """Wait until every submitted event is stored; returns them (with sequences) in order."""
        async with self._settling:
            await self._settle(len(self._in_flight))
        stored, self._stored = self._stored, []
        reused, self._reused = self._reused, []
        if stored or reused:
            self._end_span(stored[-1].sequence if stored else 0)
        if reused:
            raise ReusedIdError.in_batch(reused, len(stored))
        return stored

    async def _store_unwritten(self, prepared: Prepared) -> None:
        """Store an event not written here, the ordinary way; one its retries wrote and that
        was not acknowledged is among the `unknown`."""
        try:
            await self._keep(self.log.store(prepared))
        except PublishFailedError as exc:
            if exc.sent:
                self.unknown.append(prepared)
            raise

    async def _keep(self, settled: Awaitable[events_pb2.Event]) -> None:
        """Keep an event once stored; a client's id reused for other content is set aside, so
        the batch's other events are still settled (`flush` raises it then)."""
        try:
            self._stored.append(await settled)
        except ReusedIdError as exc:
            self._reused.append(exc)

    def abandon(self) -> None:
        """Stop waiting for acknowledgements (the flow was cancelled); what arrived is stored."""
        if self._in_flight:
            self._given_up = True
        while self._in_flight:
            entry = self._pop()
            entry.ack.cancel()
            self.unknown.append(entry.prepared)
        self._end_span(0)

    def _end_span(self, last_sequence: int) -> None:
        span, self._span = self._span, None
        if span is not None:
            span.set_attribute("messaging.batch.message_count", self._written)
            if last_sequence:
                span.set_attribute("amelia.event.last_sequence", last_sequence)
            else:
                span.set_attribute("amelia.events.abandoned", True)
            span.end()
        self._written = 0

    def _pop(self) -> _InFlight:
        self.log.stats.waiting -= 1
        return self._in_flight.popleft()

    async def _settle(self, count: int) -> None:
        """Settle the `count` oldest events in flight, in order (retrying a missing ack)."""
        count = min(count, len(self._in_flight))
        if count > 1:
            try:
                await self._wait_together(count)
            except BaseException:
                self.abandon()
                raise
        for _ in range(count):
            if not self._in_flight:  # abandoned meanwhile (`settle_written`'s caller waits)
                raise PublishFailedError(
                    "the events' flow stopped before they were acknowledged, so they may or "
                    "may not be stored",
                    sent=True,
                    reason="the flow stopped before they were acknowledged",
                )
            entry = self._in_flight[0]
            try:
                ack = _arrived(entry.ack)
                if ack is None:
                    ack = await self._ack(entry)
            except nats.errors.MaxPayloadError as exc:
                self.abandon()
                raise InvalidEventError(
                    f"event is {len(entry.prepared.payload)} bytes: larger than NATS accepts "
                    f"({exc})"
                ) from exc
            except BaseException:
                self.abandon()
                raise
            try:
                if ack is None:
                    # No acknowledgement: publish it again the ordinary way (same id: stored
                    # once), as written: if it cannot be sent again, it may still be stored.
                    self.log.stats.retried += 1
                    event = await self.log.store(entry.prepared, written=True)
                elif ack.duplicate and entry.prepared.from_client:
                    event = await self.log.stored_before(entry.prepared, ack.seq)
                else:
                    event = self.log.stored(entry.prepared, ack)
            except ReusedIdError as exc:
                self._pop()
                self._reused.append(exc)
                continue
            except BaseException:
                self.abandon()
                raise
            self._pop()
            self._stored.append(event)

    async def _wait_together(self, count: int) -> None:
        """Wait (one poll interval at most) for the acknowledgements of the `count` oldest
        events together: one wait for the lot instead of a timeout and a shielded future per
        event. JetStream answers the events of one connection in the order they were written,
        so the newest one's acknowledgement arriving means the others' almost always have;
        any that has not (an error, a lost connection, a slow server) is settled on its own by
        `_ack`, with its deadline and retry, before anything after it."""
        last = self._in_flight[count - 1].ack
        if not last.done():
            await asyncio.wait((last,), timeout=_ACK_POLL_SECONDS)

    async def _ack(self, entry: _InFlight) -> api.PubAck | None:
        """The event's acknowledgement, or None when it will not come: the connection it was
        written on is gone, NATS answered with an error, or EVENTS_PUBLISH_TIMEOUT_SECONDS
        passed (a busy server is waited for; only a lost event is worth sending again)."""
        nc = self.log.nc
        deadline = entry.written_at + self.log.settings.EVENTS_PUBLISH_TIMEOUT_SECONDS
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    # Not `asyncio.wait_for`: on Python 3.11 it swallows a cancellation that
                    # comes just as the acknowledgement does.
                    async with asyncio.timeout(max(0.0, min(remaining, _ACK_POLL_SECONDS))):
                        return await asyncio.shield(entry.ack)
                except TimeoutError:
                    lost = nc.stats["reconnects"] != entry.generation or not nc.is_connected
                    if lost or remaining <= _ACK_POLL_SECONDS:
                        log.info("event acknowledgement missing; publishing again", lost=lost)
                        break
        except nats.errors.MaxPayloadError:
            raise
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.info("event acknowledgement missing; publishing again", error=repr(exc))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not entry.ack.cancelled() or (current is not None and current.cancelling()):
                raise  # this flow is being cancelled, not the acknowledgement
        entry.ack.cancel()
        return None


def _arrived(ack: asyncio.Future[api.PubAck]) -> api.PubAck | None:
    """The acknowledgement if it already arrived as one; None when it has to be waited for or
    did not come as an acknowledgement (an error, a cancellation: `_ack` decides)."""
    if ack.done() and not ack.cancelled() and ack.exception() is None:
        return ack.result()
    return None
