"""Building the events service: connect NATS, make sure the stream exists, serve EventService."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
import nats.errors

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.eventlog import EventLog
from amelia_common.grpc_server import GrpcService
from amelia_common.logging import get_logger
from amelia_common.nats_client import connect_nats, nats_health
from amelia_common.settings import Settings
from amelia_events.servicer import EventServicer

log = get_logger("amelia.events")

SERVICE_NAME = events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
SOURCE = "amelia.events"


@dataclass
class EventsService(GrpcService):
    """The gRPC service plus the event log it serves (tests and benchmarks read its stats)."""

    event_log: EventLog | None = None
    servicer: EventServicer | None = None


async def _ensure_stream(event_log: EventLog, timeout: float = 30.0) -> None:
    """Create or update the stream, waiting for JetStream to be ready after a fresh start."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await event_log.ensure_stream()
            return
        except (nats.errors.Error, TimeoutError) as exc:
            if asyncio.get_running_loop().time() >= deadline:
                raise ConnectionError(f"JetStream is not available: {exc!r}") from exc
            log.warning("waiting for JetStream", error=repr(exc))
            await asyncio.sleep(0.5)


def _handlers(servicer: EventServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The generated handlers, except that StreamEvents hands gRPC its messages serialized
    already when they are bytes: `fanout` serializes each event once for every stream."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}

    class Capture:
        def add_generic_rpc_handlers(self, generic: object) -> None:
            pass

        def add_registered_method_handlers(
            self, service: str, methods: dict[str, grpc.RpcMethodHandler]
        ) -> None:
            handlers.update(methods)

    events_pb2_grpc.add_EventServiceServicer_to_server(servicer, Capture())
    stream = handlers["StreamEvents"]
    serialize = stream.response_serializer
    assert serialize is not None

    def serialized(message: bytes | events_pb2.StreamEventsResponse) -> bytes:
        return message if isinstance(message, bytes) else serialize(message)

    handlers["StreamEvents"] = grpc.unary_stream_rpc_method_handler(
        stream.unary_stream,
        request_deserializer=stream.request_deserializer,
        response_serializer=serialized,
    )
    return handlers


async def build_service(settings: Settings) -> EventsService:
    """The events service, ready to `start()` or `serve()`; NATS is connected and the stream exists."""
    nc = await connect_nats(settings, name="amelia-events")
    event_log = EventLog(nc, settings, source=SOURCE)
    try:
        await _ensure_stream(event_log)
    except BaseException:
        await nc.close()
        raise

    async def close_nats() -> None:
        await event_log.close()
        await nc.close()

    svc = EventsService(
        name="events",
        settings=settings,
        port=settings.EVENTS_GRPC_PORT,
        service_names=[SERVICE_NAME],
        register=lambda server: None,
        dependencies={"nats": nats_health(nc)},
        on_shutdown=[close_nats],
        event_log=event_log,
    )
    servicer = EventServicer(event_log, svc.stopping)

    def register(server: grpc.aio.Server) -> None:
        handlers = _handlers(servicer)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        server.add_registered_method_handlers(SERVICE_NAME, handlers)

    svc.register = register
    svc.servicer = servicer
    return svc
