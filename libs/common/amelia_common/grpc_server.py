"""The gRPC server every Amelia service runs on.

One bootstrap so each service behaves the same to grpcurl and to operators: `grpc.health.v1`
(SERVING only while the service's dependencies answer), server reflection, a request id bound to
every log line, the API token checked, one error mapping for every servicer (typed `AmeliaError`s
to their status, dependency outages to UNAVAILABLE naming the dependency and telling clients not
to retry — the caller decides —, anything else to INTERNAL with that request id, never a
traceback on the wire; each status with its google.rpc.Status in `grpc-status-details-bin`),
message size and keepalive limits, and a graceful shutdown on
SIGTERM/SIGINT that stops accepting, drains in-flight calls for a grace period, then closes
NATS and the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from amelia_common import metrics, reflection, telemetry
from amelia_common.auth import token_ok
from amelia_common.errors import (
    MAX_REQUEST_ID_LENGTH,
    InvalidArgumentError,
    UnavailableError,
    as_amelia_error,
    shorten_echoes,
)
from amelia_common.grpc_client import KEEPALIVE_MS, STATUS_DETAILS, client_options
from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.grpc")

HealthCheck = Callable[[], Awaitable[bool]]
ShutdownHook = Callable[[], Awaitable[None]]

# Health entry name of each dependency: `dependency/<name>` (e.g. `dependency/nats`).
DEPENDENCY_PREFIX = "dependency/"

REQUEST_ID = "x-request-id"
# The form of a request id a caller may choose (1-128 of [A-Za-z0-9._:-]): one rule for the
# gateway's `X-Request-Id` header and the services' `x-request-id` metadata (`request_id_of`).
REQUEST_ID_FORM = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_LENGTH}}}")
# Trailing metadata a gRPC client's retry policy obeys: a negative value means "do not retry".
RETRY_PUSHBACK = "grpc-retry-pushback-ms"
NO_RETRY = "-1"

# The google.rpc.Status of a refusal (its code and message, and typed details), what grpcurl
# prints as "Details" and generated clients read (grpcio-status `rpc_status.from_call`, Go's
# `status.FromError`, Java's `StatusProto`). Every status of the error boundary carries one:
# a RequestInfo with the call's request id; an ErrorInfo where a program can act on the reason
# (ERROR_DOMAIN, the reasons below); a RetryInfo for a dependency outage.
ERROR_DOMAIN = "amelia"
# ErrorInfo reasons: a dependency down (metadata `dependency`: "PostgreSQL", "NATS", …), no API
# token sent, a wrong one sent.
DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE"
API_TOKEN_MISSING = "API_TOKEN_MISSING"
API_TOKEN_INVALID = "API_TOKEN_INVALID"
# RetryInfo of a dependency outage: do not call again sooner than this. A retry sooner would find
# the outage as it was: the service probes its dependencies every second (its health, which a
# client may Watch instead), and its NATS client reconnects every 0.5 s; an outage that lasts
# less than that is rare, one that lasts longer is not shortened by calls. With the pushback
# above (no automatic retry), it is advice for the caller that decides to try again.
DEPENDENCY_RETRY_SECONDS = 1

# Calls that stay open without a token: probes and grpcurl's discovery.
_PUBLIC_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def from_servicer(exc: grpc.aio.AioRpcError) -> bool:
    """Whether one of the mesh's servicers sent this status (every status of ours carries the
    request id trailer), rather than gRPC itself for a service it could not reach."""
    return any(key == REQUEST_ID for key, _ in exc.trailing_metadata() or ())


def status_details(
    code: grpc.StatusCode, message: str, request_id: str, *details: Message
) -> tuple[str, bytes]:
    """The `grpc-status-details-bin` trailer of a status: a google.rpc.Status with `code` and
    `message` (they must be the call's own), a RequestInfo with `request_id`, then `details`."""
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in (error_details_pb2.RequestInfo(request_id=request_id), *details):
        status.details.add().Pack(detail)
    return STATUS_DETAILS, status.SerializeToString()


def error_info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    request_id: str,
    *details: Message,
    trailers: tuple[tuple[str, str], ...] = (),
) -> None:
    """End the call with `code` and `message`, its request id and google.rpc.Status (with
    `details`) in the trailers, and `trailers` besides. (Trailers given to `abort` replace
    those set before, so the request id is given again.)"""
    await context.abort(
        code,
        message,
        trailing_metadata=(
            (REQUEST_ID, request_id),
            *trailers,
            status_details(code, message, request_id, *details),
        ),
    )


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """The clients' channel arguments, plus what only a server decides."""
    return [
        *client_options(settings),
        # The fastest pings without data the server accepts (the C core's "min RECV ping
        # interval"): the clients' keepalive, every KEEPALIVE_MS, with room for timer jitter.
        # Slower than that, the server answers GOAWAY too_many_pings.
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
        # A port another process holds must be an error, not silently shared.
        ("grpc.so_reuseport", 0),
    ]


class PortInUseError(RuntimeError):
    """The configured port is taken by another process."""


def _metadata_value(context: grpc.aio.ServicerContext, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return ""


def request_id_of(given: str) -> str:
    """The request id of a call: the caller's when it is in REQUEST_ID_FORM, else a new one.
    An id of any other form (spaces, `<>`, 500 characters, control characters) is replaced
    rather than refused, as the gateway does with its header: it goes into the trailer, the
    error's RequestInfo and every log line of the call, so it must be one short token there."""
    return given if REQUEST_ID_FORM.fullmatch(given) else uuid.uuid4().hex


def token_from_metadata(context: grpc.aio.ServicerContext) -> str:
    """The bearer token a caller sent as `authorization: Bearer …` or `x-api-key`."""
    auth = _metadata_value(context, "authorization")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return _metadata_value(context, "x-api-key")


class _Undecodable:
    """A request message that could not be decoded; the handler answers INVALID_ARGUMENT.

    gRPC decodes requests before (unary) or while (client streams) the handler runs, and a
    decoding error there is UNKNOWN with an ERROR traceback in our log. Decoding tolerantly and
    refusing in the handler makes a malformed frame the caller's INVALID_ARGUMENT instead.
    """

    def __init__(self, message_type: str, error: Exception) -> None:
        self.message_type = message_type
        self.error = error

    def refuse(self) -> InvalidArgumentError:
        log.debug("undecodable request", error=repr(self.error))
        if "MaxDepth" in str(self.error):
            # Well-formed, but deeper than protobuf decodes (100 messages: a JSON value nested
            # about 32 levels in a Struct, the gateway's limit for a body too).
            return InvalidArgumentError(
                f"the request could not be decoded as {self.message_type}: nested too deeply "
                "(protobuf decodes at most 100 levels of messages, about 32 levels of JSON "
                "in a Struct)"
            )
        return InvalidArgumentError(
            f"the request could not be decoded as {self.message_type} (malformed protobuf)"
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", "the request message")

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the caller's
            return _Undecodable(message_type, exc)

    return deserialize


def _code_name(context: grpc.aio.ServicerContext, cancelled: bool) -> str:
    """The status a call ended with, for the RPC metrics."""
    if cancelled:
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK.name


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise request.refuse()
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


def _incoming(request: Any, streaming_in: bool) -> Any:
    """The request a handler sees: decoded, or InvalidArgumentError raised inside the boundary."""
    return _decoded_stream(request) if streaming_in else _decoded(request)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Request id, auth, access log, request decoding and the error boundary.

    The boundary maps what a handler raises to one status, the same way for every service:
    an `AmeliaError` to its code and message, a dependency's connection error to UNAVAILABLE
    naming the dependency (`errors.dependency_unavailable`), anything else to INTERNAL with the
    request id (the traceback goes to our log, never on the wire). Response streams may be
    written by yielding (async generators) or with `context.write` (e.g. grpc_health's Watch).
    """

    def __init__(self, api_token: str) -> None:
        self._token = api_token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        public = method.startswith(_PUBLIC_SERVICES)
        codecs = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, public, streaming_in=False),
                **codecs,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, public, streaming_in=False),
                **codecs,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, public, streaming_in=True),
                **codecs,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, method, public, streaming_in=True),
            **codecs,
        )

    async def _enter(self, context: grpc.aio.ServicerContext, method: str, public: bool) -> str:
        request_id = request_id_of(_metadata_value(context, REQUEST_ID))
        structlog.contextvars.bind_contextvars(request_id=request_id, rpc=method)
        # Trailing, not initial, metadata: a streaming handler decides when its headers go out
        # (StreamEvents sends them once it is subscribed).
        context.set_trailing_metadata(((REQUEST_ID, request_id),))
        if public:
            return request_id
        token = token_from_metadata(context)
        if not token_ok(self._token, token):
            await abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong API token: send 'authorization: Bearer <AMELIA_API_TOKEN>'",
                request_id,
                error_info(API_TOKEN_INVALID if token else API_TOKEN_MISSING),
            )
        return request_id

    async def _fail(
        self, context: grpc.aio.ServicerContext, request_id: str, exc: BaseException
    ) -> None:
        """Answer the status `exc` stands for (called from the handler's `except`)."""
        error = as_amelia_error(exc)
        if error is None:
            log.exception("rpc failed", error=repr(exc))
            await abort(
                context,
                grpc.StatusCode.INTERNAL,
                f"internal error (request id {request_id})",
                request_id,
            )
            return
        if isinstance(error, UnavailableError):
            log.warning(
                "dependency unavailable",
                dependency=error.dependency,
                error=error.message,
                **error.metadata,
            )
            # This replica answered: its dependency is down, and another attempt would wait it
            # out again (our channels retry UNAVAILABLE reads 4 more times: 5x the wait, and
            # 5x the load on what is recovering). -1 tells a gRPC client not to retry (gRFC A6
            # server pushback); the caller decides. An unreachable replica is still retried.
            # Its Status says which dependency is down (ErrorInfo) and how long a caller that
            # tries again waits first (RetryInfo, DEPENDENCY_RETRY_SECONDS).
            await abort(
                context,
                error.code,
                shorten_echoes(error.message),
                request_id,
                error_info(DEPENDENCY_UNAVAILABLE, dependency=error.dependency, **error.metadata),
                error_details_pb2.RetryInfo(
                    retry_delay=duration_pb2.Duration(seconds=DEPENDENCY_RETRY_SECONDS)
                ),
                trailers=((RETRY_PUSHBACK, NO_RETRY),),
            )
            return
        log.debug("rpc refused", code=error.code.name, error=error.message)
        await abort(context, error.code, shorten_echoes(error.message), request_id)

    @contextlib.asynccontextmanager
    async def _boundary(
        self, context: grpc.aio.ServicerContext, method: str, public: bool
    ) -> AsyncIterator[None]:
        """Around one call: request id and auth on the way in, the error mapping on the way out."""
        started = time.perf_counter()
        request_id = ""
        cancelled = False
        try:
            request_id = await self._enter(context, method, public)
            yield
        except asyncio.CancelledError:
            cancelled = True
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the error boundary
            await self._fail(context, request_id, exc)
        finally:
            elapsed = time.perf_counter() - started
            if not public:
                log.debug("rpc done", ms=round(elapsed * 1000, 2))
                metrics.RPC_DURATION.labels(method, _code_name(context, cancelled)).observe(elapsed)
            structlog.contextvars.unbind_contextvars("request_id", "rpc")

    def _wrap_unary(self, behavior: Any, method: str, public: bool, *, streaming_in: bool) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._boundary(context, method, public):
                return await behavior(_incoming(request, streaming_in), context)

        return wrapper

    def _wrap_stream(self, behavior: Any, method: str, public: bool, *, streaming_in: bool) -> Any:
        if inspect.isasyncgenfunction(behavior):

            async def yielding(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with self._boundary(context, method, public):
                    async for item in behavior(_incoming(request, streaming_in), context):
                        yield item

            return yielding

        async def writing(request: Any, context: grpc.aio.ServicerContext) -> None:
            # A handler that writes with `context.write` and returns (grpc_health's Watch), or
            # one that returns an async iterator without being a generator function itself.
            async with self._boundary(context, method, public):
                result = behavior(_incoming(request, streaming_in), context)
                if not hasattr(result, "__aiter__"):
                    await result
                    return
                try:
                    async for item in result:
                        await context.write(item)
                finally:
                    if hasattr(result, "aclose"):
                        await result.aclose()

        return writing


@dataclass
class GrpcService:
    """A service's gRPC server: register servicers, name dependencies, then `serve()`.

    `service_names` are the full names (`amelia.v1.EventService`) used for health and reflection.
    `dependencies` are probes polled every `health_interval` seconds; the service reports
    SERVING only while all of them return True. `on_shutdown` hooks run after the server drained.
    """

    name: str
    settings: Settings
    port: int
    service_names: list[str]
    register: Callable[[grpc.aio.Server], None]
    dependencies: dict[str, HealthCheck] = field(default_factory=dict)
    on_shutdown: list[ShutdownHook] = field(default_factory=list)
    health_interval: float = 1.0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    bound_port: int = 0
    _server: grpc.aio.Server | None = None
    _health: health.aio.HealthServicer | None = None
    _watch: asyncio.Task[None] | None = None
    _dependency_state: dict[str, bool] = field(default_factory=dict)

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful when `port` is 0)."""
        server = grpc.aio.server(
            interceptors=[
                *telemetry.server_interceptors(),
                ServerInterceptor(self.settings.api_token),
            ],
            options=server_options(self.settings),
            maximum_concurrent_rpcs=None,
        )
        self.register(server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        # Reflection with the protos' comments, for grpcurl's `describe` (amelia_common.reflection).
        reflection.enable_server_reflection(
            [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
            server,
        )
        host = self.settings.bind_host
        if not self.settings.api_token and host != self.settings.HOST:
            log.warning(
                "no AMELIA_API_TOKEN set: listening on loopback only", requested=self.settings.HOST
            )
        address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise PortInUseError(
                f"{self.name}: cannot listen on {address}: the port is in use or not allowed"
            ) from exc
        if bound == 0:
            raise PortInUseError(f"{self.name}: cannot listen on {address}: the port is in use")
        self.bound_port = bound
        self._server = server
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        await self.check_dependencies()
        self._watch = asyncio.create_task(self._watch_dependencies(), name=f"{self.name}-health")
        log.info("listening", service=self.name, address=f"{host}:{bound}")
        return bound

    async def _set_all(self, status: int) -> None:
        assert self._health is not None
        for name in ("", *self.service_names):
            await self._health.set(name, status)

    async def check_dependencies(self) -> bool:
        """Probe every dependency once and publish the result on the health service."""
        healthy = True
        for dep, probe in self.dependencies.items():
            try:
                async with asyncio.timeout(max(self.health_interval * 3, 2.0)):
                    ok = await probe()
            except Exception:  # noqa: BLE001 - a failing probe is an unhealthy dependency
                ok = False
            if self._dependency_state.get(dep) != ok:
                (log.info if ok else log.warning)("dependency", dependency=dep, up=ok)
            self._dependency_state[dep] = ok
            metrics.DEPENDENCY_UP.labels(self.name, dep).set(1 if ok else 0)
            healthy = healthy and ok
            # Each dependency is also a health entry (`dependency/nats`, `dependency/postgres`),
            # so a client (the gateway's /v1/status) can tell which one is down.
            if self._health is not None and not self.stopping.is_set():
                await self._health.set(
                    f"{DEPENDENCY_PREFIX}{dep}",
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING,
                )
        metrics.SERVING.labels(self.name).set(1 if healthy and not self.stopping.is_set() else 0)
        if not self.stopping.is_set():
            await self._set_all(
                health_pb2.HealthCheckResponse.SERVING
                if healthy
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
        return healthy

    async def _watch_dependencies(self) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(self.health_interval)
            await self.check_dependencies()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight calls finish for `grace` seconds, then close resources."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        metrics.SERVING.labels(self.name).set(0)
        grace = self.settings.GRPC_SHUTDOWN_GRACE_SECONDS if grace is None else grace
        log.info("shutting down", service=self.name, grace_seconds=grace)
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._watch is not None:
            self._watch.cancel()
        if self._server is not None:
            await self._server.stop(grace)
        for hook in reversed(self.on_shutdown):
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        log.info("stopped", service=self.name)

    async def serve(self) -> None:
        """Start, then run until SIGTERM/SIGINT, then shut down gracefully."""
        await self.start()
        # What start-up made (modules, the embedding model, gRPC, SQLAlchemy) lives as long as
        # the process: out of the collector's sight, so neither full collections while serving
        # nor the one at exit walk it. That last one took 6-7 s for agents and rag (py-spy:
        # gc_collect_main after "stopped"), which every stop and `amelia down` waited for;
        # 0.6 s frozen.
        gc.freeze()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()
