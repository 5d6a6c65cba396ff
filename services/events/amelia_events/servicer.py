"""amelia.v1.EventService over the shared event log client (`amelia_common.eventlog`).

The servicer only translates requests into `EventLog` calls. Failures are typed errors the
shared interceptor turns into status codes (`amelia_common.errors`): INVALID_ARGUMENT says what
is wrong, PERMISSION_DENIED refuses a client forging the services' events, ALREADY_EXISTS an
event id reused for other content (a retry gets the event as stored), UNAVAILABLE names the
NATS that did not answer and says retrying is safe (`outage`). Every call waits for NATS at most
EVENTS_PUBLISH_TIMEOUT_SECONDS; only a stream already open waits for as long as NATS is away.
Reading, pacing and NATS restarts are the reader's job, so other services that read the log
directly behave exactly like StreamEvents.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re

import grpc
from google.protobuf import timestamp_pb2

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common import paging
from amelia_common.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    StreamEndedError,
)
from amelia_common.eventlog import (
    EventLog,
    StartAt,
    filter_subjects,
    timestamp_problem,
)
from amelia_common.eventlog.pipeline import BatchUnavailableError, PublishFailedError
from amelia_events import pagination
from amelia_events.fanout import Call, Hub
from amelia_events.heartbeat import Heartbeats, heartbeat_seconds
from amelia_events.memory import Reclaimer
from amelia_events.outage import NatsUnreachableError, naming_nats, nats_unreachable

# At most this many events in one PublishEvents request or one StreamEvents message.
MAX_BATCH = 1000
# A StreamEvents message or a ListEvents page takes no more events once they add up to this
# (one event always fits): well under the 4 MiB that gRPC clients accept by default (grpcio,
# grpc-js, grpcurl), with events of up to EVENTS_MAX_DATA_BYTES. Counted in events alone,
# 1,000 large events would make a message no client can receive, and a stream that fails on
# it again at every reconnect.
MESSAGE_BYTES = 1024 * 1024

# When a batched stream falls behind at the live edge (an event was already delivered behind
# the one starting the next message), that message waits until this long after the previous
# one, gathering what arrives meanwhile (`EventReader.next_batch`'s hold): fewer, fuller
# messages when the service or its client is short of CPU (each gRPC message costs the service
# ~100-200 us whatever it carries). A stream that keeps up sends each message as soon as the
# previous one was written, with what arrived during that write: no timer delays an event
# (docs/performance.md, session 9: the timed hold was most of the p99 at 2k events/s).
LIVE_HOLD_SECONDS = 0.002

_EVENT_NAME = re.compile(r"^events/([1-9][0-9]{0,19})$")


def _start_time(ts: timestamp_pb2.Timestamp, field: str) -> dt.datetime:
    problem = timestamp_problem(ts, field)
    if problem is not None:
        raise InvalidArgumentError(problem)
    return ts.ToDatetime(tzinfo=dt.UTC)


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
        self.event_log = event_log
        self.stopping = stopping
        self.hub = Hub(event_log, stopping)
        # Open StreamEvents calls: their count and progress are the service's stream metrics.
        self.readers: set[Call] = set()
        # StreamEvents calls being served (counted from before their first await, so that calls
        # arriving together cannot all pass the limit), at most EVENTS_MAX_STREAMS.
        self.streams = 0
        self.streams_refused = 0
        self.memory = Reclaimer()

    def _naming_nats(self) -> contextlib.AbstractContextManager[None]:
        return naming_nats(self.event_log.nc, self.event_log.settings)

    async def PublishEvent(
        self, request: events_pb2.PublishEventRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.PublishEventResponse:
        if not request.HasField("event"):
            raise InvalidArgumentError("event is required")
        event = events_pb2.Event()
        event.CopyFrom(request.event)
        try:
            with self._naming_nats():
                stored = await self.event_log.publish_event(event, from_client=True)
        except NatsUnreachableError as exc:
            cause = exc.__cause__
            if isinstance(cause, PublishFailedError):
                sent = cause.sent
                exc.metadata = {
                    "stored": "0",
                    "unknown": "1" if sent else "0",
                    "ids": event.id if sent else "",
                    "notStored": "0" if sent else "1",
                }
            raise
        return events_pb2.PublishEventResponse(event=stored)

    async def PublishEvents(
        self, request: events_pb2.PublishEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.PublishEventsResponse:
        if len(request.events) > MAX_BATCH:
            raise InvalidArgumentError(
                f"{len(request.events)} events in one request: at most {MAX_BATCH}; "
                "send them in several requests"
            )
        try:
            with self._naming_nats():
                stored = await self.event_log.publish_events(list(request.events), from_client=True)
        except NatsUnreachableError as exc:
            if isinstance(exc.__cause__, BatchUnavailableError):
                exc.metadata = exc.__cause__.metadata()
            raise
        return events_pb2.PublishEventsResponse(events=stored)

    async def StreamEvents(  # type: ignore[override]  # messages may come serialized
        self, request: events_pb2.StreamEventsRequest, context: grpc.aio.ServicerContext
    ) -> None:
        every = heartbeat_seconds(request)
        # Calls on one filter at the live edge share one consumer and serialize each event
        # once (`fanout`); each message is handed to gRPC before the next one is taken, so a
        # slow client is paced by HTTP/2 flow control and never holds up another. Written with
        # `context.write`, not yielded: a generator here and the interceptor's around it cost
        # each message two more async generator steps (docs/performance.md, session 13).
        call = Call(
            self.hub,
            list(request.filter.types),
            request.filter.subject,
            start_position(request),
            min(request.max_events_per_message, MAX_BATCH),
            MESSAGE_BYTES,
            LIVE_HOLD_SECONDS,
        )  # (bad input: INVALID_ARGUMENT, before the log is asked anything)
        self._admit()
        try:
            with self._naming_nats():
                if request.WhichOneof("start") == "after_sequence":
                    await self.event_log.check_resume_point(request.after_sequence)
            self.readers.add(call)
            await self._serve(call, every, context)
        finally:
            self.streams -= 1
            self.memory.call_ended()
        if self.stopping.is_set() and not context.done():
            # (Should the call end meanwhile, gRPC drops the status: nobody is there to tell.)
            raise StreamEndedError(
                "the events service is shutting down; reconnect with "
                f"after_sequence={call.sent} to continue without a gap"
            )

    def _admit(self) -> None:
        """Count a new stream in, or RESOURCE_EXHAUSTED naming EVENTS_MAX_STREAMS: each stream
        holds a bounded amount of memory whatever its client does, so bounding how many this
        process serves bounds its memory (and says so before JetStream runs out of consumers)."""
        limit = self.event_log.settings.EVENTS_MAX_STREAMS
        if limit and self.streams >= limit:
            self.streams_refused += 1
            raise ResourceExhaustedError(
                f"too many open streams on this events service: it serves at most {limit} "
                "StreamEvents calls at once (EVENTS_MAX_STREAMS); close some and try again, "
                "or use another replica"
            )
        self.streams += 1

    async def _serve(self, call: Call, every: int, context: grpc.aio.ServicerContext) -> None:
        try:
            with self._naming_nats():
                try:
                    # Headers go out once the call is subscribed (its tap or its own consumer
                    # exists): a client that awaits them misses nothing published after.
                    await self._open(call)
                    await context.send_initial_metadata(())
                    write = context.write
                    if every:
                        beats = Heartbeats(call, self.event_log.nc, self.event_log.settings)
                        # Closed before the call is: a client gone while a message was being
                        # written leaves the generator at its `yield`, its read of the next
                        # message still running — which could open a tap for a closed call.
                        async with contextlib.aclosing(
                            beats.around(call.next_message, every)
                        ) as messages:
                            async for message in messages:
                                await write(message)
                    else:
                        next_message = call.next_message
                        while (message := await next_message()) is not None:
                            await write(message)
                finally:
                    await call.close()
        finally:
            self.readers.discard(call)

    async def _open(self, call: Call) -> None:
        """Subscribe the call, waiting for NATS at most EVENTS_PUBLISH_TIMEOUT_SECONDS (like
        every other call), then UNAVAILABLE naming it: never a silent wait.

        Only the opening is bounded: once open, the call is carried across a NATS restart or
        outage of any length (a new consumer after its last sequence: no gap, no duplicate),
        as docs/events.md promises; the service's health says NATS is down meanwhile.
        """
        bound = self.event_log.settings.EVENTS_PUBLISH_TIMEOUT_SECONDS
        try:
            async with asyncio.timeout(bound):
                await call.open()
        except TimeoutError as exc:
            raise nats_unreachable(
                self.event_log.nc,
                self.event_log.settings,
                f"the stream was not opened: its JetStream consumer could not be created within "
                f"{bound:g}s (EVENTS_PUBLISH_TIMEOUT_SECONDS)",
            ) from exc

    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ListEventsResponse:
        size = paging.page_size(
            request.page_size, pagination.DEFAULT_PAGE_SIZE, pagination.MAX_PAGE_SIZE
        )
        filters = filter_subjects(list(request.filter.types), request.filter.subject)
        after = request.after_sequence
        if request.page_token:
            after = max(after, pagination.decode_token(request.page_token, filters))
            start = StartAt.after(after)
        elif request.HasField("start_time"):
            start = StartAt.at_time(_start_time(request.start_time, "start_time"))
        else:
            start = StartAt.after(after)
        response = events_pb2.ListEventsResponse()
        page_bytes = 0
        full = False
        with self._naming_nats():
            async with self.event_log.read(
                list(request.filter.types),
                request.filter.subject,
                start,
                follow=False,
                batch=size,
                retry_for=self.event_log.settings.EVENTS_PUBLISH_TIMEOUT_SECONDS,
            ) as reader:
                async for event in reader:
                    if event.sequence <= after:
                        continue
                    response.events.append(event)
                    page_bytes += event.ByteSize()
                    if len(response.events) >= size or page_bytes >= MESSAGE_BYTES:
                        full = True
                        break
                more = bool(reader.pending) and full
        if more:
            response.next_page_token = pagination.encode_token(
                response.events[-1].sequence, filters
            )
        return response

    async def GetEvent(
        self, request: events_pb2.GetEventRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.GetEventResponse:
        match = _EVENT_NAME.match(request.name)
        if match is None or int(match.group(1)) >= 2**64:  # a uint64, as every sequence
            raise InvalidArgumentError(
                f"name {request.name[:100]!r} must be 'events/{{sequence}}' with a sequence "
                "from 1 to 18446744073709551615, e.g. 'events/42'"
            )
        with self._naming_nats():
            event = await self.event_log.get(int(match.group(1)))
        if event is None:
            raise NotFoundError(
                f"{request.name} not found: no event has that sequence (or it expired)"
            )
        return events_pb2.GetEventResponse(event=event)
