"""The gRPC bootstrap every service runs on, over real channels.

A small EventService double stands in for a service's logic (the real services have their own
tests); what is under test here is what every service gets from `GrpcService`: health tied to
dependencies, reflection, the error boundary, the API token, and a graceful drain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from amelia.v1 import agents_pb2, agents_pb2_grpc, events_pb2, events_pb2_grpc
from amelia_agents.server import build_service as build_agents
from amelia_common import errors
from amelia_common.db import create_engine, db_health
from amelia_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from amelia_common.grpc_client import aio_channel
from amelia_common.grpc_server import GrpcService, HealthCheck
from amelia_common.nats_client import connect_nats, nats_health
from amelia_common.settings import Settings
from amelia_events.server import build_service as build_events

SERVICE = "amelia.v1.EventService"


class SlowOrBroken(events_pb2_grpc.EventServiceServicer):
    """GetEvent takes `delay` seconds; ListEvents raises an unexpected exception; PublishEvent
    raises the typed error named by the event's type."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.started = asyncio.Event()

    async def GetEvent(
        self, request: events_pb2.GetEventRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.GetEventResponse:
        self.started.set()
        await asyncio.sleep(self.delay)
        return events_pb2.GetEventResponse(event=events_pb2.Event(id="done"))

    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ListEventsResponse:
        raise RuntimeError("secret internals /etc/passwd")

    async def PublishEvent(
        self, request: events_pb2.PublishEventRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.PublishEventResponse:
        raise TYPED_ERRORS[request.event.type][0]


# An error a handler raises, and the status and details the caller gets.
TYPED_ERRORS: dict[str, tuple[Exception, grpc.StatusCode, str]] = {
    "invalid.argument": (
        errors.InvalidArgumentError("page_size must be positive"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size must be positive",
    ),
    "not.found": (
        errors.NotFoundError("runs/1 does not exist"),
        grpc.StatusCode.NOT_FOUND,
        "runs/1 does not exist",
    ),
    "permission.denied": (
        errors.PermissionDeniedError("only the mesh publishes run.*"),
        grpc.StatusCode.PERMISSION_DENIED,
        "only the mesh publishes run.*",
    ),
    "unavailable": (
        errors.UnavailableError("the embedding model", "it is loading"),
        grpc.StatusCode.UNAVAILABLE,
        "the embedding model is unavailable: it is loading; try again shortly",
    ),
    # An 8000-character value the message quotes: its first 64 characters and its length.
    "echo.long": (
        errors.InvalidArgumentError(f"run name 'runs/{'a' * 8000}' must be 'runs/<uuid>'"),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"run name 'runs/{'a' * 59}…' (8005 characters) must be 'runs/<uuid>'",
    ),
    "connection.refused": (
        ConnectionRefusedError(111, "Connect call failed ('10.0.0.9', 6333)"),
        grpc.StatusCode.UNAVAILABLE,
        "a network dependency is unavailable: ConnectionRefusedError: [Errno 111] Connect call "
        "failed ('10.0.0.9', 6333); try again shortly",
    ),
}


async def start(
    settings: Settings,
    servicer: SlowOrBroken,
    dependencies: dict[str, HealthCheck] | None = None,
    on_shutdown: list[Callable[[], Awaitable[None]]] | None = None,
) -> GrpcService:
    svc = GrpcService(
        name="test",
        settings=settings,
        port=0,
        service_names=[SERVICE],
        register=lambda server: events_pb2_grpc.add_EventServiceServicer_to_server(
            servicer, server
        ),
        dependencies=dependencies or {},
        on_shutdown=on_shutdown or [],
        health_interval=0.2,
    )
    await svc.start()
    return svc


async def health(port: int, service: str = SERVICE) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


async def wait_health(port: int, expected: int, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (status := await health(port)) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"health stayed {status}"
        await asyncio.sleep(0.1)


async def test_health_and_reflection_list_the_services(settings: Settings) -> None:
    svc = await start(settings, SlowOrBroken())
    try:
        assert await health(svc.bound_port) == health_pb2.HealthCheckResponse.SERVING
        assert await health(svc.bound_port, "") == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.bound_port}") as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)

            async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            names = set()
            async for reply in stub.ServerReflectionInfo(requests()):
                names = {s.name for s in reply.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
    finally:
        await svc.stop(0)


async def test_unexpected_exception_is_internal_with_a_request_id_and_no_traceback(
    settings: Settings,
) -> None:
    svc = await start(settings, SlowOrBroken())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.bound_port}") as ch:
            call = events_pb2_grpc.EventServiceStub(ch).ListEvents(
                events_pb2.ListEventsRequest(), metadata=(("x-request-id", "req-42"),)
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "req-42" in (err.value.details() or "")
        assert "passwd" not in (err.value.details() or "")
        assert "Traceback" not in (err.value.details() or "")
    finally:
        await svc.stop(0)


async def test_typed_errors_become_their_status_with_their_message(settings: Settings) -> None:
    svc = await start(settings, SlowOrBroken())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.bound_port}") as ch:
            stub = events_pb2_grpc.EventServiceStub(ch)
            for name, (_, code, details) in TYPED_ERRORS.items():
                request = events_pb2.PublishEventRequest(event=events_pb2.Event(type=name))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.PublishEvent(request)
                assert (err.value.code(), err.value.details()) == (code, details)
    finally:
        await svc.stop(0)


async def test_api_token_is_required_when_configured(infra: object, settings: Settings) -> None:
    secured = settings.model_copy(
        update={"AMELIA_API_TOKEN": settings.AMELIA_API_TOKEN.__class__("s3cret")}
    )
    svc = await start(secured, SlowOrBroken())
    try:
        address = f"127.0.0.1:{svc.bound_port}"
        async with grpc.aio.insecure_channel(address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await events_pb2_grpc.EventServiceStub(ch).GetEvent(events_pb2.GetEventRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Health stays open for probes.
            assert await health(svc.bound_port) == health_pb2.HealthCheckResponse.SERVING
        async with aio_channel(address, secured) as ch:
            reply = await events_pb2_grpc.EventServiceStub(ch).GetEvent(
                events_pb2.GetEventRequest()
            )
            assert reply.event.id == "done"
    finally:
        await svc.stop(0)


async def test_graceful_shutdown_finishes_in_flight_calls_and_refuses_new_ones(
    settings: Settings,
) -> None:
    servicer = SlowOrBroken(delay=1.0)
    closed: list[str] = []

    async def close_resources() -> None:
        closed.append("closed")

    svc = await start(settings, servicer, on_shutdown=[close_resources])
    address = f"127.0.0.1:{svc.bound_port}"
    async with grpc.aio.insecure_channel(address) as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        in_flight = asyncio.ensure_future(stub.GetEvent(events_pb2.GetEventRequest(), timeout=10))
        await asyncio.wait_for(servicer.started.wait(), 5)
        stopping = asyncio.create_task(svc.stop(grace=5))
        await asyncio.sleep(0.2)
        async with grpc.aio.insecure_channel(address) as late:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await events_pb2_grpc.EventServiceStub(late).GetEvent(
                    events_pb2.GetEventRequest(), timeout=2
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await in_flight).event.id == "done"
        await stopping
    assert closed == ["closed"]


async def test_nats_down_means_not_serving_until_it_returns(
    tmp_path: Path, settings: Settings
) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    own = settings.model_copy(update={"NATS_URL": nats.start()})
    nc = await connect_nats(own, "bootstrap-test")
    svc = await start(own, SlowOrBroken(), {"nats": nats_health(nc)})
    try:
        assert await health(svc.bound_port) == health_pb2.HealthCheckResponse.SERVING
        nats.stop()
        await wait_health(svc.bound_port, health_pb2.HealthCheckResponse.NOT_SERVING)
        nats.start()
        await wait_health(svc.bound_port, health_pb2.HealthCheckResponse.SERVING)
    finally:
        await svc.stop(0)
        await nc.close()
        nats.stop()


async def test_postgres_down_means_not_serving_until_it_returns(
    tmp_path: Path, settings: Settings
) -> None:
    postgres = EmbeddedPostgres(tmp_path)
    url = postgres.start()
    engine = create_engine(settings, url)
    svc = await start(settings, SlowOrBroken(), {"postgres": db_health(engine)})
    try:
        assert await health(svc.bound_port) == health_pb2.HealthCheckResponse.SERVING
        postgres.stop()
        await wait_health(svc.bound_port, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert postgres.start() == url
        await wait_health(svc.bound_port, health_pb2.HealthCheckResponse.SERVING)
    finally:
        await svc.stop(0)
        await engine.dispose()
        postgres.stop()


async def test_a_taken_port_is_a_clear_error(settings: Settings) -> None:
    first = await start(settings, SlowOrBroken())
    taken = settings.model_copy(update={"EVENTS_GRPC_PORT": first.bound_port})
    second = GrpcService("second", taken, first.bound_port, [SERVICE], lambda s: None)
    try:
        with pytest.raises(RuntimeError, match="in use"):
            await second.start()
    finally:
        await first.stop(0)


# --------------------------------------------------------------------------- real services


async def test_health_watch_follows_a_real_service_through_a_nats_outage(
    tmp_path: Path, settings: Settings
) -> None:
    """Watch streams over a real channel (grpc_health writes with context.write): SERVING,
    NOT_SERVING while NATS is down, SERVING once it is back."""
    nats = EmbeddedNats(tmp_path, free_port())
    own = settings.model_copy(update={"NATS_URL": nats.start()})
    service = await build_events(own)
    port = await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            watches = {
                name: stub.Watch(health_pb2.HealthCheckRequest(service=name))
                for name in (SERVICE, "dependency/nats")
            }

            async def next_status(name: str, wanted: int) -> None:
                async with asyncio.timeout(60):
                    async for reply in watches[name]:
                        if reply.status == wanted:
                            return

            for name in watches:
                await next_status(name, health_pb2.HealthCheckResponse.SERVING)
            nats.stop()
            for name in watches:
                await next_status(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            nats.start()
            for name in watches:
                await next_status(name, health_pb2.HealthCheckResponse.SERVING)
            for call in watches.values():
                call.cancel()
            unknown = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"))
            first = await anext(aiter(unknown))
            assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            unknown.cancel()
    finally:
        await service.stop(0)
        nats.stop()


@pytest.mark.parametrize("which", ["events", "agents"])
async def test_real_services_take_the_right_token_and_refuse_one_of_the_same_length(
    settings: Settings, which: str
) -> None:
    token = "k3y-0123456789abcdef"
    wrong = token[:-1] + "0"  # same length, only the last character differs
    secured = settings.model_copy(
        update={
            "AMELIA_API_TOKEN": settings.AMELIA_API_TOKEN.__class__(token),
            "AGENT_WORKERS": 0,
        }
    )
    service = await (build_events if which == "events" else build_agents)(secured)
    address = f"127.0.0.1:{await service.start()}"

    async def call(sent: str) -> grpc.StatusCode:
        async with aio_channel(address, secured, token=sent) as ch:
            try:
                if which == "events":
                    await events_pb2_grpc.EventServiceStub(ch).ListEvents(
                        events_pb2.ListEventsRequest(
                            filter=events_pb2.EventFilter(subject="tokens/none")
                        )
                    )
                else:
                    await agents_pb2_grpc.AgentServiceStub(ch).ListWorkflows(
                        agents_pb2.ListWorkflowsRequest()
                    )
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    try:
        assert await call(token) == grpc.StatusCode.OK
        assert await call(wrong) == grpc.StatusCode.UNAUTHENTICATED
        assert await call("") == grpc.StatusCode.UNAUTHENTICATED
        assert await health(service.bound_port, "") == health_pb2.HealthCheckResponse.SERVING
    finally:
        await service.stop(0)


async def test_an_undecodable_request_is_invalid_argument_without_an_error_log(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """gRPC alone answers UNKNOWN and logs an ERROR traceback for a frame it cannot decode."""
    svc = await start(settings, SlowOrBroken())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.bound_port}") as ch:
            raw = ch.unary_unary(f"/{SERVICE}/GetEvent")  # no serializer: bytes go as they are
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\xff\xff\xff\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "amelia.v1.GetEventRequest" in (err.value.details() or "")
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await svc.stop(0)


def test_a_request_nested_too_deeply_is_said_so_not_called_malformed() -> None:
    """Well-formed protobuf deeper than protobuf decodes (QA s20: a Struct nested ~35 levels
    was refused as "malformed protobuf", where the gateway says it is nested too deeply)."""
    from google.protobuf import struct_pb2

    from amelia_common.grpc_server import _tolerant

    deep: dict[str, object] = {}
    inner = deep
    for _ in range(40):
        inner["a"] = {}
        inner = inner["a"]  # type: ignore[assignment]
    message = struct_pb2.Struct()
    message.update(deep)
    decoded = _tolerant(struct_pb2.Struct.FromString)(message.SerializeToString())  # type: ignore[misc]
    assert decoded.refuse().message == (
        "the request could not be decoded as google.protobuf.Struct: nested too deeply "
        "(protobuf decodes at most 100 levels of messages, about 32 levels of JSON in a Struct)"
    )
    broken = _tolerant(struct_pb2.Struct.FromString)(b"\xff\xff\xff\xff")  # type: ignore[misc]
    assert broken.refuse().message.endswith("(malformed protobuf)")
