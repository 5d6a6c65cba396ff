"""The google.rpc.Status every refusal of the mesh carries in `grpc-status-details-bin`.

What grpcurl prints as "Details" and generated clients read (grpcio-status
`rpc_status.from_call`, Go's `status.FromError`, Java's `StatusProto`): the call's code and
message, a RequestInfo with the request id of the `x-request-id` trailer, and for a dependency
outage an ErrorInfo naming the dependency and a RetryInfo. A real events service on a
nats-server of the module's own (stopped by the outage test), over real channels; the one
double is a servicer that raises a bug, for INTERNAL and the token check.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.grpc_server import GrpcService
from amelia_common.settings import Settings
from amelia_events.server import build_service

DETAILS = "grpc-status-details-bin"
REQUEST_INFO = "type.googleapis.com/google.rpc.RequestInfo"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@dataclass
class Private:
    nats: EmbeddedNats
    channel: grpc.aio.Channel

    @property
    def events(self) -> events_pb2_grpc.EventServiceStub:
        return events_pb2_grpc.EventServiceStub(self.channel)


@pytest.fixture
async def private(tmp_path: Path, infra: Any) -> AsyncIterator[Private]:
    """An events service on a nats-server of its own; a channel that sends each call once."""
    nats = EmbeddedNats(tmp_path, free_port())
    nats.start()
    service = await build_service(
        infra.settings(NATS_URL=nats.url, EVENTS_PUBLISH_TIMEOUT_SECONDS=2.0)
    )
    await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.bound_port}")
    try:
        yield Private(nats, channel)
    finally:
        await channel.close()
        await service.stop(1.0)
        nats.stop()


def trailer(exc: grpc.aio.AioRpcError, key: str) -> Any:
    values = [v for k, v in exc.trailing_metadata() or () if k == key]
    assert len(values) == 1, (key, exc.trailing_metadata())
    return values[0]


def status_of(exc: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The trailer as grpcio-status's `from_call` reads it: a Status whose code and message
    must be those of the call."""
    status = status_pb2.Status.FromString(trailer(exc, DETAILS))
    assert (status.code, status.message) == (exc.code().value[0], exc.details())
    return status


def request_info(status: status_pb2.Status) -> str:
    """The request id of the status's one RequestInfo (its first detail)."""
    assert status.details[0].type_url == REQUEST_INFO, status
    info = error_details_pb2.RequestInfo()
    assert status.details[0].Unpack(info)
    return info.request_id


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    return err.value


async def test_a_refused_call_carries_its_status_with_the_request_id_sent(
    private: Private,
) -> None:
    rid = f"f5-{uuid.uuid4().hex}"
    exc = await refused(
        private.events.GetEvent(
            events_pb2.GetEventRequest(name="not-an-event"), metadata=(("x-request-id", rid),)
        )
    )
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_of(exc)
    assert request_info(status) == rid == trailer(exc, "x-request-id")
    assert len(status.details) == 1  # a refusal of the input: nothing else to say

    # Without an id sent: the one the service made, in both trailers.
    exc = await refused(private.events.GetEvent(events_pb2.GetEventRequest(name="events/0")))
    status = status_of(exc)
    assert request_info(status) == trailer(exc, "x-request-id") != ""

    # NOT_FOUND, after the log was read.
    exc = await refused(
        private.events.GetEvent(events_pb2.GetEventRequest(name="events/99999999999"))
    )
    assert exc.code() == grpc.StatusCode.NOT_FOUND
    assert request_info(status_of(exc)) == trailer(exc, "x-request-id")


async def test_a_stream_refused_carries_its_status_too(private: Private) -> None:
    rid = f"f5-{uuid.uuid4().hex}"
    request = events_pb2.StreamEventsRequest(filter=events_pb2.EventFilter(types=["a..b"]))
    exc = await refused(private.events.StreamEvents(request, metadata=(("x-request-id", rid),)))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert request_info(status_of(exc)) == rid == trailer(exc, "x-request-id")

    # A resume point past the log's end: OUT_OF_RANGE, from the log itself.
    request = events_pb2.StreamEventsRequest(after_sequence=99999999999)
    exc = await refused(private.events.StreamEvents(request))
    assert exc.code() == grpc.StatusCode.OUT_OF_RANGE
    assert request_info(status_of(exc)) == trailer(exc, "x-request-id")


def outage_details(exc: grpc.aio.AioRpcError, dependency: str) -> None:
    """UNAVAILABLE naming `dependency`: RequestInfo, ErrorInfo, RetryInfo; pushback kept."""
    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
    status = status_of(exc)
    assert request_info(status) == trailer(exc, "x-request-id")
    assert [d.type_url for d in status.details] == [REQUEST_INFO, ERROR_INFO, RETRY_INFO]
    error, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[1].Unpack(error) and status.details[2].Unpack(retry)
    assert (error.reason, error.domain, dict(error.metadata)) == (
        "DEPENDENCY_UNAVAILABLE",
        "amelia",
        {"dependency": dependency},
    )
    assert retry.retry_delay == duration_pb2.Duration(seconds=1)
    assert trailer(exc, "grpc-retry-pushback-ms") == "-1"


async def test_a_dependency_outage_names_it_and_says_when_to_retry(private: Private) -> None:
    await asyncio.to_thread(private.nats.stop)
    try:
        unary = await refused(
            private.events.GetEvent(events_pb2.GetEventRequest(name="events/1"), timeout=60)
        )
        outage_details(unary, "NATS")
        # A stream that cannot open (its consumer cannot be made): the same, from the boundary
        # around a streaming handler.
        stream = await refused(
            private.events.StreamEvents(events_pb2.StreamEventsRequest(), timeout=60)
        )
        outage_details(stream, "NATS")
    finally:
        await asyncio.to_thread(private.nats.start)


class Broken(events_pb2_grpc.EventServiceServicer):
    """A servicer with a bug: ListEvents raises what no error mapping knows."""

    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ListEventsResponse:
        raise RuntimeError("secret internals /etc/passwd")


async def test_internal_and_unauthenticated_carry_their_status(settings: Settings) -> None:
    secured = settings.model_copy(
        update={"AMELIA_API_TOKEN": settings.AMELIA_API_TOKEN.__class__("s3cret")}
    )
    service = GrpcService(
        name="test",
        settings=secured,
        port=0,
        service_names=["amelia.v1.EventService"],
        register=lambda server: events_pb2_grpc.add_EventServiceServicer_to_server(
            Broken(),  # type: ignore[abstract]  # the other RPCs: UNIMPLEMENTED
            server,
        ),
    )
    await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.bound_port}") as channel:
            stub = events_pb2_grpc.EventServiceStub(channel)
            rid = f"f5-{uuid.uuid4().hex}"
            exc = await refused(
                stub.ListEvents(
                    events_pb2.ListEventsRequest(),
                    metadata=(("x-request-id", rid), ("authorization", "Bearer s3cret")),
                )
            )
            assert exc.code() == grpc.StatusCode.INTERNAL
            status = status_of(exc)
            assert request_info(status) == rid and len(status.details) == 1  # nothing more

            for sent, reason in (("", "API_TOKEN_MISSING"), ("wrong", "API_TOKEN_INVALID")):
                metadata = [("x-request-id", rid)]
                if sent:
                    metadata.append(("authorization", f"Bearer {sent}"))
                exc = await refused(
                    stub.ListEvents(events_pb2.ListEventsRequest(), metadata=metadata)
                )
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                status = status_of(exc)
                assert request_info(status) == rid == trailer(exc, "x-request-id")
                error = error_details_pb2.ErrorInfo()
                assert [d.type_url for d in status.details] == [REQUEST_INFO, ERROR_INFO]
                assert status.details[1].Unpack(error)
                assert (error.reason, error.domain) == (reason, "amelia")
    finally:
        await service.stop(0)
