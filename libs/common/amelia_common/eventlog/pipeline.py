"""`PublishPipeline`: events written to NATS as they come, their acknowledgements awaited together.

`EventLog.publish_event` waits for JetStream's acknowledgement before the next event can be
sent: one round trip per event. A run's tokens (and a PublishEvents batch) need not wait: each
event is written to the connection at once, in order, and the acknowledgements are collected
later (`flush`), so a burst of N events costs about one round trip instead of N.

Why the order and the exactly-once guarantees still hold:

- Events are written one after the other on one connection, so JetStream receives and stores
  them in that order; what a dying connection loses is a suffix of what was written.
- An event whose acknowledgement will not come (the connection it was written on is gone, an
  error, or EVENTS_PUBLISH_TIMEOUT_SECONDS passed) is published again the ordinary way (`EventLog._publish_with_retry`), before anything after it is settled, with the same
  `Nats-Msg-Id`: stored once, at its first sequence if it had arrived.
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
                raise EventLogUnavailableError(
                    "events of this flow were given up on before NATS acknowledged them"
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
            await self._keep(self.log.store(prepared))
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
            await self._keep(self.log.store(prepared))
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
            self._pop().ack.cancel()
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
                raise EventLogUnavailableError(
                    "the events' flow stopped before they were acknowledged"
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
                    # No acknowledgement: publish it again the ordinary way (same id: stored once).
                    self.log.stats.retried += 1
                    event = await self.log.store(entry.prepared)
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
