"""`EventLog`: publish (acknowledged, retried within bounds), read and subscribe."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from amelia.v1 import events_pb2
from amelia_common import metrics, telemetry
from amelia_common.errors import AmeliaError, OutOfRangeError
from amelia_common.event_names import InvalidEventError
from amelia_common.eventlog.envelope import (
    CLIENT_ID_NAMESPACE,
    MAX_SEQUENCE,
    SUBJECT_PREFIX,
    EventLogUnavailableError,
    ReusedIdError,
    check_client_type,
    decode_event,
    filter_subjects,
    make_event,
    nats_subject,
    new_event_id,
    stamp_now,
    stream_config,
    validate_event,
)
from amelia_common.eventlog.pipeline import (
    ANSWER_IDS_CHARS,
    DEFAULT_WINDOW,
    PUBLISH_SPAN_ATTRIBUTES,
    BatchUnavailableError,
    PublishFailedError,
    PublishPipeline,
)
from amelia_common.eventlog.reader import (
    EventReader,
    StartAt,
)
from amelia_common.logging import get_logger
from amelia_common.nats_client import ensure_stream
from amelia_common.settings import Settings

log = get_logger("amelia.eventlog")


@dataclass
class PublishStats:
    """What publishing did, for logs and metrics. `waiting` is the current buffer use."""

    published: int = 0
    waiting: int = 0
    waiting_peak: int = 0
    retried: int = 0
    refused: int = 0
    handler_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# Errors worth retrying: the connection is down or reconnecting, or JetStream is not answering.
_TRANSIENT = (
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
)

Handler = Callable[[events_pb2.Event], Awaitable[None] | None]

_Answer = TypeVar("_Answer")
# How long one attempt of a read's JetStream request waits for its answer before it is sent
# again (`EventLog.request_js`): JetStream answers in milliseconds; a request that waits longer
# was most likely lost with a connection that died under it.
_READ_ATTEMPT_SECONDS = 1.0


def _report_dispatch_end(task: asyncio.Task[None]) -> None:
    """A subscription that ends on its own (not by unsubscribe/close) must not end silently."""
    if not task.cancelled() and task.exception() is not None:
        log.error("event subscription stopped", task=task.get_name(), error=repr(task.exception()))


@dataclass(frozen=True)
class Prepared:
    """An event checked and serialized for publishing: where it goes and its dedup id."""

    event: events_pb2.Event
    payload: bytes
    nats_subject: str
    dedup_id: str
    # A client's event (PublishEvent): one JetStream already had is read back (`stored_before`).
    from_client: bool = False
    # The publisher set `source` (else it was filled in, and says nothing about a retry).
    source_given: bool = True


def reused_fields(sent: Prepared, stored: events_pb2.Event) -> list[str]:
    """What `sent` changes of the event stored with its id: type, subject, data, and source or
    correlation_id when the publisher set them. Not time: a publisher that leaves it empty gets
    it stamped at each call, so a retry's differs."""
    event = sent.event
    return [
        name
        for name, same in (
            ("type", event.type == stored.type),
            ("subject", event.subject == stored.subject),
            ("data", event.data == stored.data),
            ("source", not sent.source_given or event.source == stored.source),
            (
                "correlation_id",
                not event.correlation_id or event.correlation_id == stored.correlation_id,
            ),
        )
        if not same
    ]


def _and(words: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def publish_attributes(prepared: Prepared) -> dict[str, str]:
    """An event publish's span attributes (OpenTelemetry messaging conventions)."""
    return {
        **PUBLISH_SPAN_ATTRIBUTES,
        "messaging.destination.name": prepared.nats_subject,
        "messaging.message.id": prepared.event.id,
        "amelia.event.type": prepared.event.type,
    }


@dataclass
class _Dispatcher:
    handlers: list[Handler] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    reader: EventReader | None = None


class EventLog:
    """Publishes events to the stream, reads them back, and dispatches them to handlers."""

    def __init__(self, nc: NATS, settings: Settings, source: str) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=settings.EVENTS_PUBLISH_TIMEOUT_SECONDS)
        self.settings = settings
        self.source = source
        self.stats = PublishStats()
        self._dispatchers: dict[tuple[str, str], _Dispatcher] = {}
        self._last_outage_log = 0.0
        # JetStream contexts of `request_js`, by attempt timeout (1, 2, 4 or 8 s: nats-py
        # sets the timeout per context).
        self._read_js: dict[float, JetStreamContext] = {}
        metrics.track_event_log(self)  # every process's publishes on its /metrics

    async def ensure_stream(self) -> None:
        """Create the stream, or bring its limits in line with settings.

        nats-server before 2.12 refuses to change an existing stream's `max_consumers`
        (EVENTS_MAX_CONSUMERS): the stream keeps its own then, said in a warning, and the rest
        of its configuration is still brought in line."""
        config = stream_config(self.settings)
        try:
            await ensure_stream(self.js, config)
        except nats.js.errors.BadRequestError as exc:
            if config.max_consumers is None or "MaxConsumers" not in (exc.description or ""):
                raise
            log.warning(
                "this nats-server cannot change an existing stream's max_consumers: the stream "
                "keeps its own; delete the stream (or use nats-server 2.12 or later) to apply "
                "EVENTS_MAX_CONSUMERS",
                stream=config.name,
                wanted=config.max_consumers,
                error=exc.description,
            )
            config.max_consumers = None
            await ensure_stream(self.js, config)

    # -- publish -----------------------------------------------------------------------------

    async def publish_event(
        self, event: events_pb2.Event, *, from_client: bool = False, data_checked: bool = False
    ) -> events_pb2.Event:
        """Store `event`; returns it with its sequence once JetStream acknowledged it.

        Raises `InvalidEventError` for a bad envelope and `EventLogUnavailableError` when the
        event could not be stored within EVENTS_PUBLISH_TIMEOUT_SECONDS or the publish buffer
        (EVENTS_PUBLISH_BUFFER publishes waiting at once) is full.

        `from_client` is for events a client sent (PublishEvent): types the mesh's services own
        are refused (PermissionDeniedError), and the id deduplicates only against other client ids
        (`Nats-Msg-Id: client:<id>`), so a client cannot squat the id of a service's event; a
        client's event JetStream already had comes back as stored (`stored_before`).
        Several events in a row are cheaper through `pipeline()` (one round trip for all).
        `data_checked`: see `prepare`.
        """
        return await self.store(
            self.prepare(event, from_client=from_client, data_checked=data_checked)
        )

    async def publish_events(
        self, events: list[events_pb2.Event], *, from_client: bool = False
    ) -> list[events_pb2.Event]:
        """Store `events` in order, one round trip for all; returns them with their sequences.

        Every event is checked before any is written, so a bad one stores nothing; its error
        begins with its place in the batch (`events[3]: …`). Raises like `publish_event`, but
        an outage as `BatchUnavailableError`: which events are stored (a prefix), which may or
        may not be (sent, not acknowledged: their ids) and which were never sent; publishing
        the same events again (same ids) stores each once. `ReusedIdError` (a client's id
        already stored with other content) comes once every other event is stored.
        """
        prepared: list[Prepared] = []
        for index, event in enumerate(events):
            try:
                prepared.append(self.prepare(event, from_client=from_client))
            except AmeliaError as exc:
                # Which event of the batch, as a field path (AIP-161): `events[3]: event type …`.
                exc.message = f"events[{index}]: {exc.message}"
                exc.args = (exc.message,)
                raise
        # So few in flight that the ids of those an outage leaves unknown fit in its answer.
        longest = max((len(item.event.id) for item in prepared), default=1)
        pipeline = self.pipeline(window=min(DEFAULT_WINDOW, ANSWER_IDS_CHARS // (longest + 1)))
        try:
            for item in prepared:
                await pipeline.write(item)
            return await pipeline.flush()
        except EventLogUnavailableError as exc:
            raise BatchUnavailableError.of(
                prepared,
                pipeline.settled,
                pipeline.unknown,
                exc,
                pipeline.reused_ids,
                self.settings.EVENTS_DEDUP_WINDOW_SECONDS,
            ) from exc

    def pipeline(self, *, window: int = DEFAULT_WINDOW) -> PublishPipeline:
        """A `PublishPipeline`: events written in order at once, acknowledgements awaited together."""
        return PublishPipeline(self, window=window)

    def prepare(
        self, event: events_pb2.Event, *, from_client: bool = False, data_checked: bool = False
    ) -> Prepared:
        """Fill in the envelope's defaults and check it (see `publish_event`); serialized once.
        `data_checked`: `event.data` was built from values its builder passed through
        `check_json` (never for a client's event), so it is not walked again."""
        if not event.id:
            event.id = new_event_id()
        if not event.HasField("time"):
            stamp_now(event.time)
        source_given = bool(event.source)
        if not source_given:
            event.source = self.source
        event.sequence = 0
        payload = validate_event(
            event,
            self.settings.EVENTS_MAX_DATA_BYTES,
            data_checked=data_checked and not from_client,
        )
        if from_client:
            check_client_type(event.type)
        return Prepared(
            event=event,
            payload=payload,
            nats_subject=nats_subject(event.type, event.subject),
            dedup_id=f"{CLIENT_ID_NAMESPACE}{event.id}" if from_client else event.id,
            from_client=from_client,
            source_given=source_given,
        )

    def buffer_full(self) -> bool:
        return self.stats.waiting >= self.settings.EVENTS_PUBLISH_BUFFER

    async def store(self, prepared: Prepared, *, written: bool = False) -> events_pb2.Event:
        """Publish a prepared event and wait for its acknowledgement (retried within bounds).
        `written`: it was written to NATS already (a pipeline's event whose acknowledgement did
        not come), so, not stored in time, it may or may not be stored (`PublishFailedError`)."""
        event = prepared.event
        if self.buffer_full():
            self.stats.refused += 1
            log.error(
                "event refused: publish buffer full",
                event_type=event.type,
                waiting=self.stats.waiting,
                refused_total=self.stats.refused,
            )
            reason = (
                f"{self.stats.waiting} publishes are already waiting for NATS JetStream to come "
                f"back (EVENTS_PUBLISH_BUFFER={self.settings.EVENTS_PUBLISH_BUFFER})"
            )
            if written:
                raise PublishFailedError(
                    f"event {event.id} ({event.type}) was sent to NATS JetStream but not "
                    f"acknowledged, and {reason}, so it may or may not be stored; publish it "
                    "again with the same id (it is stored once)",
                    sent=True,
                    reason=reason,
                )
            raise PublishFailedError(
                f"event {event.id} ({event.type}) not stored: {reason}", sent=False, reason=reason
            )
        self.stats.waiting += 1
        self.stats.waiting_peak = max(self.stats.waiting_peak, self.stats.waiting)
        try:
            with telemetry.producer_span(
                f"publish {event.type}", publish_attributes(prepared)
            ) as span:
                ack = await self._publish_with_retry(
                    event, prepared.nats_subject, prepared.payload, prepared.dedup_id, written
                )
                span.set_attribute("amelia.event.sequence", ack.seq)
        finally:
            self.stats.waiting -= 1
        if ack.duplicate and prepared.from_client:
            return await self.stored_before(prepared, ack.seq)
        return self.stored(prepared, ack)

    def stored(self, prepared: Prepared, ack: api.PubAck) -> events_pb2.Event:
        """The event as stored: a copy of the envelope with JetStream's sequence."""
        self.stats.published += 1
        stored = events_pb2.Event()
        stored.CopyFrom(prepared.event)
        stored.sequence = ack.seq
        return stored

    async def stored_before(self, prepared: Prepared, sequence: int) -> events_pb2.Event:
        """A client's event JetStream already had (PubAck.duplicate): the event stored at
        `sequence`, read back, so the reply is what GetEvent returns, not the envelope sent
        (whose time, at least, was never stored). A retry gets it back; an id reused for other
        content (`reused_fields`) is `ReusedIdError`, as the agents service answers a
        request_id reused for another run. Only duplicates pay for the read."""
        self.stats.published += 1
        event_id = prepared.event.id
        earlier = await self.get(sequence)
        if earlier is None:
            raise ReusedIdError(
                f"event id {event_id!r} was already used, at sequence {sequence}, which the log "
                "no longer holds (expired), so this event was not stored"
            )
        differs = reused_fields(prepared, earlier)
        if differs:
            raise ReusedIdError(
                f"event id {event_id!r} is already stored at sequence {sequence} "
                f"(events/{sequence}) with different {_and(differs)}, so this event was not "
                "stored"
            )
        return earlier

    async def _publish_with_retry(
        self,
        event: events_pb2.Event,
        subject: str,
        payload: bytes,
        dedup_id: str,
        written: bool = False,
    ) -> api.PubAck:
        budget = self.settings.EVENTS_PUBLISH_TIMEOUT_SECONDS
        deadline = time.monotonic() + budget
        # Several attempts fit in the budget: a request lost in a dying connection is resent
        # on the next one (same id, so JetStream stores it once).
        attempt = max(0.2, min(2.0, budget / 4))
        delay = 0.05
        # Handed to a live connection at least once (here, or before: `written`): it may have
        # been stored, whatever the connection's state since (a frozen server stores what its
        # socket buffer holds once it runs again), so it is never said to be "not stored".
        sent = written
        while True:
            remaining = deadline - time.monotonic()
            if not self.nc.is_connected:
                # Wait for the connection here rather than in nats-py's reconnect buffer, so an
                # event that never left this process is known not to be stored.
                if remaining <= 0 or self.nc.is_closed:
                    raise self._refuse(event, budget, sent, "NATS is unreachable")
                self.stats.retried += 1
                self._note_outage("disconnected")
                await asyncio.sleep(min(0.05, remaining))
                continue
            sent_before = sent
            try:
                sent = True
                return await self.js.publish(
                    subject,
                    payload,
                    timeout=max(0.05, min(remaining, attempt)),
                    stream=self.settings.EVENTS_STREAM,
                    headers={"Nats-Msg-Id": dedup_id},
                )
            except nats.errors.MaxPayloadError as exc:
                raise InvalidEventError(
                    f"event is {len(payload)} bytes: larger than NATS accepts ({exc})"
                ) from exc
            except _TRANSIENT as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.nc.is_closed:
                    raise self._refuse(event, budget, sent, type(exc).__name__) from exc
                self.stats.retried += 1
                self._note_outage(repr(exc))
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                # NATS said no to this publish; one sent before it may still be stored.
                raise self._refuse(
                    event, budget, sent_before, f"NATS JetStream refused it ({exc})", refused=True
                ) from exc

    def _refuse(
        self,
        event: events_pb2.Event,
        budget: float,
        sent: bool,
        why: str,
        *,
        refused: bool = False,
    ) -> PublishFailedError:
        """Count and log a publish that failed; returns the error to raise: "may or may not be
        stored" once it was `sent`, else "not stored" (`refused`: NATS said no at once)."""
        self.stats.refused += 1
        log.error(
            "event not acknowledged: it may or may not be stored" if sent else "event not stored",
            event_id=event.id,
            event_type=event.type,
            error=why,
            refused_total=self.stats.refused,
            waiting=self.stats.waiting,
        )
        window = self.settings.EVENTS_DEDUP_WINDOW_SECONDS
        if sent:
            return PublishFailedError(
                f"event {event.id} ({event.type}) was not acknowledged by NATS JetStream within "
                f"{budget:g}s ({why}), so it may or may not be stored; publish it again with the "
                f"same id: JetStream drops a repeat within EVENTS_DEDUP_WINDOW_SECONDS "
                f"({window:g}s)",
                sent=True,
                reason=f"not acknowledged within {budget:g}s: {why}",
            )
        if refused:
            return PublishFailedError(
                f"event {event.id} ({event.type}) not stored: {why}", sent=False, reason=why
            )
        return PublishFailedError(
            f"event {event.id} ({event.type}) not stored: {why} for {budget:g}s "
            "(EVENTS_PUBLISH_TIMEOUT_SECONDS)",
            sent=False,
            reason=f"{why} for {budget:g}s",
        )

    def _note_outage(self, why: str) -> None:
        now = time.monotonic()
        if now - self._last_outage_log >= 1.0:
            self._last_outage_log = now
            log.warning(
                "event log unreachable: publishes waiting",
                error=why,
                waiting=self.stats.waiting,
                retried_total=self.stats.retried,
            )

    async def publish(
        self,
        event_type: str,
        subject: str = "",
        data: Mapping[str, Any] | None = None,
        *,
        event_id: str | None = None,
        correlation_id: str = "",
    ) -> events_pb2.Event:
        """Build and store an event from this service."""
        event = make_event(
            event_type,
            subject,
            data,
            source=self.source,
            event_id=event_id,
            correlation_id=correlation_id,
        )
        return await self.publish_event(event)

    # -- read --------------------------------------------------------------------------------

    def read(
        self,
        types: list[str] | tuple[str, ...] = (),
        subject: str = "",
        start: StartAt | None = None,
        **options: Any,
    ) -> EventReader:
        """An `EventReader` over matching events; see its docstring for `options`.

        Raises `InvalidEventError` for a bad filter before touching NATS.
        """
        return EventReader(
            self.nc,
            self.settings.EVENTS_STREAM,
            filter_subjects(types, subject),
            start or StartAt.new(),
            **options,
        )

    async def request_js(
        self, request: Callable[[JetStreamContext], Awaitable[_Answer]], what: str
    ) -> _Answer:
        """One JetStream API request of a read (stream info, a stored message), answered within
        EVENTS_PUBLISH_TIMEOUT_SECONDS however NATS comes and goes meanwhile.

        A request written on a connection that dies under it (nats-server killed, restarted)
        is lost with it, and nats-py never sends it again: waited for whole, it took the call's
        every second though NATS was back in two (QA s26 F6). So each attempt waits at most
        `_READ_ATTEMPT_SECONDS` (JetStream answers in milliseconds; longer after each that
        timed out, for a busy machine), a disconnected connection
        is waited for here rather than written to, and a lost request is sent again on the new
        connection, as `_publish_with_retry` does for publishes; reads are safe to repeat.
        Past the deadline: `EventLogUnavailableError` naming `what` (the servicer answers
        UNAVAILABLE naming NATS)."""
        budget = self.settings.EVENTS_PUBLISH_TIMEOUT_SECONDS
        deadline = time.monotonic() + budget
        attempt = _READ_ATTEMPT_SECONDS
        delay = 0.05
        while True:
            remaining = deadline - time.monotonic()
            if not self.nc.is_connected:
                if remaining <= 0 or self.nc.is_closed:
                    raise EventLogUnavailableError(
                        f"could not {what}: NATS is unreachable for {budget:g}s "
                        "(EVENTS_PUBLISH_TIMEOUT_SECONDS)"
                    )
                await asyncio.sleep(min(0.05, remaining))
                continue
            js = self._read_js.get(attempt)
            if js is None:
                js = self._read_js[attempt] = self.nc.jetstream(timeout=attempt)
            try:
                async with asyncio.timeout(remaining):
                    return await request(js)
            except _TRANSIENT as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.nc.is_closed:
                    raise EventLogUnavailableError(
                        f"could not {what}: NATS JetStream did not answer within {budget:g}s "
                        f"(EVENTS_PUBLISH_TIMEOUT_SECONDS; {type(exc).__name__})"
                    ) from exc
                # Slower than JetStream ever is when well (a busy machine?): wait longer next.
                attempt = min(attempt * 2, 8.0)
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)

    async def last_sequence(self) -> int:
        """The log's last sequence now (one `stream_info`, through `request_js`)."""
        info = await self.request_js(
            lambda js: js.stream_info(self.settings.EVENTS_STREAM), "read the log's end"
        )
        return int(info.state.last_seq)

    async def check_resume_point(self, after_sequence: int) -> None:
        """OUT_OF_RANGE for an `after_sequence` beyond the log's last sequence now (Kafka's
        OffsetOutOfRange). Every replica reads one JetStream stream, so a sequence a client saw
        is never beyond it: one that is comes from a log since wiped, and waiting for the log to
        reach it would miss everything meanwhile, silently. (StreamEvents and StreamRun.)"""
        if after_sequence <= 0:
            return
        last = await self.last_sequence()
        if after_sequence > last:
            raise OutOfRangeError(
                f"after_sequence {after_sequence} is beyond the end of the event log:"
                f" its last sequence is {last} (was the log reset?); resume after {last} for"
                " new events, or from the beginning"
            )

    async def get(self, sequence: int) -> events_pb2.Event | None:
        """The event stored at `sequence`, or None when there is none (or it expired)."""
        if not 0 < sequence <= MAX_SEQUENCE:
            return None
        try:
            msg = await self.request_js(
                lambda js: js.get_msg(self.settings.EVENTS_STREAM, sequence), "read an event"
            )
        except nats.js.errors.NotFoundError:
            return None
        if not msg.subject or not msg.subject.startswith(SUBJECT_PREFIX + "."):
            return None
        return decode_event(msg.data, sequence, msg.subject)

    async def last(self, event_type: str, subject: str) -> events_pb2.Event | None:
        """The latest stored event of this type and subject, or None when there is none (one
        request: JetStream keeps the last message of each NATS subject at hand)."""
        stored_on = nats_subject(event_type, subject)
        try:
            msg = await self.request_js(
                lambda js: js.get_msg(self.settings.EVENTS_STREAM, subject=stored_on),
                "read an event",
            )
        except nats.js.errors.NotFoundError:
            return None
        return decode_event(msg.data, msg.seq or 0, msg.subject)

    # -- subscribe (the seed's EventBus) -------------------------------------------------------

    async def subscribe(self, type_pattern: str, handler: Handler, *, subject: str = "") -> None:
        """Call `handler(event)` for every event matching the pattern published from now on.

        Returns once the subscription is live: an event published after this returns is
        delivered. Handlers for one pattern run in order, one event at a time; an exception in
        one is logged (and counted in `stats.handler_errors`) and the others still run.
        """
        key = (type_pattern, subject)
        dispatcher = self._dispatchers.get(key)
        if dispatcher is not None:
            dispatcher.handlers.append(handler)
            return
        reader = self.read([type_pattern], subject)
        dispatcher = _Dispatcher(handlers=[handler], reader=reader)
        self._dispatchers[key] = dispatcher
        await reader.open()
        dispatcher.task = asyncio.create_task(
            self._dispatch(dispatcher), name=f"eventlog-subscribe-{type_pattern}"
        )
        dispatcher.task.add_done_callback(_report_dispatch_end)

    def unsubscribe(self, type_pattern: str, handler: Handler, *, subject: str = "") -> None:
        """Stop calling `handler`; the last handler's removal closes the subscription."""
        key = (type_pattern, subject)
        dispatcher = self._dispatchers.get(key)
        if dispatcher is None or handler not in dispatcher.handlers:
            return
        dispatcher.handlers.remove(handler)
        if not dispatcher.handlers:
            del self._dispatchers[key]
            if dispatcher.task is not None:
                dispatcher.task.cancel()

    async def _dispatch(self, dispatcher: _Dispatcher) -> None:
        assert dispatcher.reader is not None
        async with dispatcher.reader as reader:
            async for event in reader:
                for handler in list(dispatcher.handlers):
                    try:
                        result = handler(event)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:
                        self.stats.handler_errors += 1
                        log.exception(
                            "event handler failed",
                            event_type=event.type,
                            sequence=event.sequence,
                            handler=getattr(handler, "__qualname__", repr(handler)),
                        )

    async def close(self) -> None:
        """Stop every subscription (their consumers are deleted)."""
        dispatchers = list(self._dispatchers.values())
        self._dispatchers.clear()
        for dispatcher in dispatchers:
            if dispatcher.task is not None:
                dispatcher.task.cancel()
        for dispatcher in dispatchers:
            if dispatcher.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await dispatcher.task
