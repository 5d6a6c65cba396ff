"""The gateway's only way to the mesh: one gRPC channel per service, calls built from descriptors.

Calls are made from the proto method descriptors rather than the generated stubs, so a new RPC
needs no code here: the route table names it, and this module finds its request and response
types. Every call carries the API token (by `aio_channel`) and the request id as metadata.

The channels bound what gRPC receives for a call nobody reads (`BOUNDED_WINDOW`): the gateway
stops reading a stream whose client stops reading (a stalled WebSocket replay, an NDJSON
response nobody takes), and gRPC's C core keeps receiving for it up to the call's HTTP/2
window, which its BDP probing grows on a fast link: 13-18 MiB of the 17-27 MiB a stalled
WebSocket replay of 16 KB events cost the gateway sat in gRPC's buffers (docs/gateway.md,
"Memory per client").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from amelia.v1 import agents_pb2, crons_pb2, events_pb2, git_pb2, rag_pb2
from amelia_common.grpc_client import aio_channel
from amelia_common.grpc_server import DEPENDENCY_PREFIX
from amelia_common.settings import Settings
from amelia_gateway.errors import GatewayError, from_rpc_error

PACKAGE = "amelia.v1"

SERVICES: dict[str, ServiceDescriptor] = {
    "EventService": events_pb2.DESCRIPTOR.services_by_name["EventService"],
    "AgentService": agents_pb2.DESCRIPTOR.services_by_name["AgentService"],
    "RagService": rag_pb2.DESCRIPTOR.services_by_name["RagService"],
    "GitService": git_pb2.DESCRIPTOR.services_by_name["GitService"],
    "CronService": crons_pb2.DESCRIPTOR.services_by_name["CronService"],
}

# Which setting holds each service's address; also the short name used in /v1/status.
ADDRESS_SETTING: dict[str, tuple[str, str]] = {
    "EventService": ("events", "EVENTS_ADDRESS"),
    "AgentService": ("agents", "AGENTS_ADDRESS"),
    "RagService": ("rag", "RAG_ADDRESS"),
}

# Services served by another one's process, on its channel (and in its health).
SERVED_WITH: dict[str, str] = {"GitService": "AgentService", "CronService": "AgentService"}


# gRPC channel options of the gateway's channels, beside the mesh's (`aio_channel`'s): no BDP
# probing, so a call's HTTP/2 receive window stays `lookahead_bytes` instead of growing to tens of
# MiB on loopback, and what gRPC holds for a call whose reader stopped is that window (and the
# message being read: gRPC opens the window for a whole message once it is being read). 1 MiB is
# one message of the hub's (`hub.CHUNK_BYTES`) in flight while the gateway handles the one
# before, so a reader that keeps up is not slowed: with gRPC's 64 KiB a replay of 16 KB events
# to a WebSocket ran 15-45% slower on a loaded machine, each message waiting for the events
# service to be scheduled (docs/gateway.md, "Memory per client", throughput before/after).
BOUNDED_WINDOW: list[tuple[str, Any]] = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1024 * 1024),
]


def method(service: str, rpc: str) -> MethodDescriptor:
    try:
        return SERVICES[service].methods_by_name[rpc]
    except KeyError as exc:
        raise KeyError(f"no RPC {PACKAGE}.{service}/{rpc} in the protos") from exc


def message_class(descriptor: Any) -> type[Message]:
    cls: type[Message] = message_factory.GetMessageClass(descriptor)
    return cls


# What each service depends on (names as the services register their health entries).
DEPENDENCIES = {
    "EventService": ("nats",),
    "AgentService": ("nats", "postgres"),
    "RagService": ("nats", "postgres"),
}


@dataclass
class Upstream:
    """One service: its address and channel.

    The channel is opened on first use, inside the server's event loop (a grpc.aio channel
    belongs to the loop it was created on, and the app may be built before the loop runs).
    """

    service: str
    name: str
    address: str
    settings: Settings
    _channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = aio_channel(self.address, self.settings, options=BOUNDED_WINDOW)
        return self._channel

    def connected(self) -> bool:
        """Whether the channel has a connection up (without making it try to connect)."""
        return self.channel.get_state() == grpc.ChannelConnectivity.READY

    def error(self, exc: grpc.aio.AioRpcError, service: str = "") -> GatewayError:
        """A failed call to `service` (default: its own) on this channel, as the client is
        told of it (`errors.from_rpc_error`, the channel's state saying whether it was
        reached)."""
        channel = self._channel  # none left at shutdown: not reached, and not opened again
        reached = channel is not None and channel.get_state() == grpc.ChannelConnectivity.READY
        return from_rpc_error(exc, service or self.service, self.address, reached)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await channel.close()

    def callable(self, rpc: str, service: str = "") -> Any:
        """The multi-callable for `rpc` of `service` (default: its own), of the right arity
        (unary/stream on either side)."""
        service = service or self.service
        md = method(service, rpc)
        path = f"/{PACKAGE}.{service}/{rpc}"
        request_cls = message_class(md.input_type)
        response_cls = message_class(md.output_type)
        kind = {
            (False, False): self.channel.unary_unary,
            (False, True): self.channel.unary_stream,
            (True, False): self.channel.stream_unary,
            (True, True): self.channel.stream_stream,
        }[(md.client_streaming, md.server_streaming)]
        return kind(
            path,
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )

    async def health(self, timeout: float = 2.0) -> str:
        """grpc.health.v1 status of this service, or UNREACHABLE."""
        return await self.health_of(f"{PACKAGE}.{self.service}", timeout)

    async def down_dependency(self, timeout: float = 2.0) -> str:
        """The first of this service's dependencies its health reports NOT_SERVING ("nats"),
        or "": why a stream it was asked for does not open (the service waits for it)."""
        for dependency in DEPENDENCIES.get(self.service, ()):
            if await self.health_of(DEPENDENCY_PREFIX + dependency, timeout) == "NOT_SERVING":
                return dependency
        return ""

    async def health_of(self, name: str, timeout: float = 2.0) -> str:
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "UNREACHABLE"
            return exc.code().name
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def waiting_for(upstream: Upstream, dependency: str) -> GatewayError:
    """UNAVAILABLE: `upstream` has not opened a stream because `dependency` is down."""
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        f"the {upstream.name} service at {upstream.address} cannot open the stream: its"
        f" dependency {dependency} is down (its health check dependency/{dependency} says"
        " NOT_SERVING)",
        service=upstream.service,
    )


# A stream the service has not opened (no headers) after this long: ask the service's health
# which of its dependencies is down (it waits for it), then again at doubling intervals.
OPEN_CHECK_SECONDS = 2.0
MAX_OPEN_CHECK_SECONDS = 30.0


async def watch_opening(
    call: Any, upstream: Upstream, on_down: Callable[[str], None], wait: float = OPEN_CHECK_SECONDS
) -> None:
    """Until the streaming `call` has its headers (the service opened it), call `on_down` with
    the name of each dependency the service's health says is down: a service waiting for one
    sends nothing, and the client must hear why, never silence."""
    opened = asyncio.ensure_future(call.initial_metadata())
    try:
        while not (await asyncio.wait({opened}, timeout=wait))[0]:
            dependency = await upstream.down_dependency()
            if dependency:
                on_down(dependency)
            wait = min(wait * 2, MAX_OPEN_CHECK_SECONDS)
    except (grpc.aio.UsageError, RuntimeError):
        return  # the channel was closed (shutdown): the call ends with it
    finally:
        settle(opened)


def settle(future: asyncio.Future[Any]) -> None:
    """Cancel `future`, or take its exception if it has one (never "exception never retrieved")."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


class Upstreams:
    """The three services' channels, opened once per gateway and closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.by_service: dict[str, Upstream] = {}
        for service, (name, setting) in ADDRESS_SETTING.items():
            address: str = getattr(settings, setting)
            self.by_service[service] = Upstream(service, name, address, settings)
        self._callables: dict[tuple[str, str], Any] = {}

    def __getitem__(self, service: str) -> Upstream:
        return self.by_service[SERVED_WITH.get(service, service)]

    def callable(self, service: str, rpc: str) -> Any:
        key = (service, rpc)
        if key not in self._callables:
            self._callables[key] = self[service].callable(rpc, service)
        return self._callables[key]

    async def close(self) -> None:
        self._callables.clear()
        for upstream in self.by_service.values():
            await upstream.close()
