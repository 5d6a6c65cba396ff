"""amelia.v1.EventService over the shared event log client (`amelia_common.eventlog`).

The servicer only translates: requests into `EventLog` calls, library errors into gRPC status
codes a person can act on (INVALID_ARGUMENT says what is wrong, UNAVAILABLE says NATS did not
answer and that retrying is safe). Reading, pacing and NATS restarts are the reader's job, so
other services that read the log directly behave exactly like StreamEvents.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator

import grpc
import nats.errors

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.eventlog import (
    EventLog,
    EventLogUnavailableError,
    EventReader,
    InvalidEventError,
    StartAt,
    filter_subjects,
)
from amelia_common.logging import get_logger
from amelia_events import pagination

log = get_logger("amelia.events")

_EVENT_NAME = re.compile(r"^events/([1-9][0-9]{0,19})$")
# google.protobuf.Timestamp's valid range: 0001-01-01 .. 9999-12-31.
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799


def _start_time(ts: object, field: str) -> dt.datetime:
    seconds, nanos = ts.seconds, ts.nanos  # type: ignore[attr-defined]
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS) or not (0 <= nanos < 1_000_000_000):
        raise InvalidEventError(f"{field} is not a valid timestamp")
    return ts.ToDatetime(tzinfo=dt.UTC)  # type: ignore[attr-defined]


def start_position(request: events_pb2.StreamEventsRequest) -> StartAt:
    """The request's `start` oneof as a StartAt; nothing set means only new events."""
    which = request.WhichOneof("start")
    if which == "from_beginning":
        return StartAt.beginning() if request.from_beginning else StartAt.new()
    if which == "after_sequence":
        return StartAt.after(request.after_sequence)
    if which == "start_time":
        return StartAt.at_time(_start_time(request.start_time, "start_time"))
    return StartAt.new()


class EventServicer(events_pb2_grpc.EventServiceServicer):
    """The four RPCs; `stopping` ends open streams when the service shuts down."""

    def __init__(self, event_log: EventLog, stopping: asyncio.Event) -> None:
        self.log = event_log
        self.stopping = stopping
        # Open StreamEvents readers: their count and progress are the service's stream metrics.
        self.readers: set[EventReader] = set()

    async def PublishEvent(
        self, request: events_pb2.PublishEventRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.PublishEventResponse:
        if not request.HasField("event"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event is required")
        event = events_pb2.Event()
        event.CopyFrom(request.event)
        try:
            stored = await self.log.publish_event(event)
        except InvalidEventError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except EventLogUnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return events_pb2.PublishEventResponse(event=stored)

    async def StreamEvents(
        self, request: events_pb2.StreamEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.StreamEventsResponse]:
        try:
            start = start_position(request)
            reader = self.log.read(
                list(request.filter.types), request.filter.subject, start, stop=self.stopping
            )
        except InvalidEventError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # Each event is handed to gRPC before the next one is read, so a slow client is paced by
        # HTTP/2 flow control and the reader only ever holds one small batch.
        self.readers.add(reader)
        try:
            async with reader:
                # Headers go out once the consumer exists, so a client that awaits them knows it
                # is subscribed: nothing published after that moment can be missed.
                await reader.open()
                await context.send_initial_metadata(())
                async for event in reader:
                    yield events_pb2.StreamEventsResponse(event=event)
        except EventLogUnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        finally:
            self.readers.discard(reader)
        if self.stopping.is_set() and not context.done():
            try:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the events service is shutting down; reconnect with "
                    f"after_sequence={reader.last_sequence} to continue without a gap",
                )
            except grpc.aio.AbortError:
                raise
            except Exception:  # noqa: BLE001 - the call ended meanwhile: nobody to tell
                log.debug("stream closed before its shutdown status could be sent")

    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ListEventsResponse:
        try:
            size = pagination.page_size(request.page_size)
            filters = filter_subjects(list(request.filter.types), request.filter.subject)
            after = request.after_sequence
            since: dt.datetime | None = None
            if request.page_token:
                after = max(after, pagination.decode_token(request.page_token, filters))
            elif request.HasField("start_time"):
                since = _start_time(request.start_time, "start_time")
        except InvalidEventError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        start = StartAt.at_time(since) if since is not None else StartAt.after(after)
        response = events_pb2.ListEventsResponse()
        try:
            async with self.log.read(
                list(request.filter.types),
                request.filter.subject,
                start,
                follow=False,
                batch=size,
                retry_for=self.log.settings.EVENTS_PUBLISH_TIMEOUT_SECONDS,
            ) as reader:
                async for event in reader:
                    if event.sequence <= after:
                        continue
                    response.events.append(event)
                    if len(response.events) >= size:
                        break
                more = bool(reader.pending) and len(response.events) >= size
        except EventLogUnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if more:
            response.next_page_token = pagination.encode_token(
                response.events[-1].sequence, filters
            )
        return response

    async def GetEvent(
        self, request: events_pb2.GetEventRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.GetEventResponse:
        match = _EVENT_NAME.match(request.name)
        if match is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"name {request.name!r} must be 'events/{{sequence}}' with a positive sequence, "
                "e.g. 'events/42'",
            )
        assert match is not None
        sequence = int(match.group(1))
        try:
            event = await self.log.get(sequence)
        except (nats.errors.Error, TimeoutError) as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot read the event log: NATS JetStream did not answer ({exc!r})",
            )
        if event is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"{request.name} not found: no event has that sequence (or it expired)",
            )
        return events_pb2.GetEventResponse(event=event)
