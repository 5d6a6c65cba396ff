"""gRPC channels from one service (or the CLI, or the gateway) to another.

The API token travels as `authorization: Bearer …` metadata on every call (added by an
interceptor, so no call site can forget it), and the channel uses the servers' message size and
keepalive limits.

An address may name several replicas: `host:port,host:port` (resolved once, when the channel
is made) or `dns:///name:port` (every address the name resolves to, resolved again as replicas
come and go — a Kubernetes headless Service, a compose service with replicas). Calls are spread
with gRPC's `round_robin`, and reads (Get*/List*/Search/Stream*/WaitRun, see `IDEMPOTENT_PREFIXES`)
that meet UNAVAILABLE — a replica killed under them — are retried on another replica by gRPC itself,
from the channel's service config. A replica that answers UNAVAILABLE because its own dependency
(PostgreSQL, NATS) is down says not to retry (`grpc-retry-pushback-ms: -1`, see grpc_server):
every replica shares that dependency, and five attempts each waiting it out took 26-33 s to
report an outage one attempt reports in a fifth of that. The caller gets UNAVAILABLE naming the
dependency and decides. Writes are never retried: a write that reached a replica
which died before answering may have happened, and only its caller can decide (CreateRun takes a
`request_id` for exactly that).

gRPC's retries stop after five attempts (about 1.5 s): enough for another replica, not for the
only one to be restarted. A call that waits on purpose (WaitRun, for minutes) is worth more than
that: `reissue_while_unavailable` sends it again, with what is left of its deadline, until a
replica answers or the deadline passes (like Temporal's `handle.result()` long poll).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from amelia.v1 import agents_pb2, events_pb2, rag_pb2
from amelia_common.settings import Settings

# The trailer of a status's google.rpc.Status (code, message, typed details): written by the
# servers' error boundary (`grpc_server.abort`), read by grpcio-status and the gateway.
STATUS_DETAILS = "grpc-status-details-bin"

# Methods whose name starts with one of these only read: safe to send again to another replica.
# WaitRun only waits for a run to end and reads it: the run goes on whichever replica serves it.
IDEMPOTENT_PREFIXES = ("Get", "List", "Search", "Stream", "Wait")
# gRPC caps maxAttempts at 5. Backoffs are randomised in [0, backoff] by gRPC: with these the
# retries of one call wait about 1.5 s at most, long enough for a killed replica's connection to
# be seen closed, short enough that a real outage is reported quickly.
RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# HTTP/2 keepalive: every connection is pinged this often (with or without calls) and closed
# when a ping is not answered within the same time, so a replica that is frozen (SIGSTOP, a
# stuck host) leaves round_robin's rotation within ~10 s and the reads in flight on it are
# retried on another replica (the retry policy). The servers accept pings this often
# (grpc_server.server_options); 30 s + 10 s left every other call waiting 40-60 s.
KEEPALIVE_MS = 5_000
# `reissue_while_unavailable`'s pauses between attempts: doubling, at most REISSUE_MAX_BACKOFF.
REISSUE_BACKOFF = 0.25
REISSUE_MAX_BACKOFF = 2.0
# A first attempt UNAVAILABLE sooner than this never reached a replica: gRPC's own retries of a
# call to a service that is down end in ~1.5 s (RETRY_POLICY). One that fails later was waiting
# on a replica that went away. (So a wait whose replica dies in its first seconds, with no other
# replica to retry on, is still reported, as before.)
UNREACHED_SECONDS = 5.0
# Schemes gRPC resolves itself (https://github.com/grpc/grpc/blob/master/doc/naming.md).
_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


def client_options(settings: Settings) -> list[tuple[str, Any]]:
    """Message size and keepalive limits every channel of the mesh uses (servers add theirs)."""
    return [
        ("grpc.max_send_message_length", settings.GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", settings.GRPC_MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        # Keep pinging an idle connection (gRPC stops after 2 pings without data by default).
        ("grpc.http2.max_pings_without_data", 0),
        # Any ping in flight (BDP probes too) stands in for the keepalive one, and waited 60 s
        # by default: the 60 s a read hung on a frozen replica.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_MS),
    ]


def idempotent_methods() -> list[dict[str, str]]:
    """Every read of the mesh's services, as service-config method names."""
    names: list[dict[str, str]] = []
    for module in (agents_pb2, events_pb2, rag_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            names.extend(
                {"service": service.full_name, "method": method.name}
                for method in service.methods
                if method.name.startswith(IDEMPOTENT_PREFIXES)
            )
    return names


def service_config() -> str:
    """The channels' gRPC service config: round_robin over every address, reads retried."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [{"name": idempotent_methods(), "retryPolicy": RETRY_POLICY}],
        }
    )


T = TypeVar("T")


async def reissue_while_unavailable(
    attempt: Callable[[float], Awaitable[T]], seconds: float, service: str
) -> T:
    """`attempt(remaining_seconds)` until it answers: on UNAVAILABLE (the replica serving it
    died, the only one is restarting) it is sent again after a short pause while `seconds`
    allow, each time with the time left. Any other error is the call's answer, and so is an
    UNAVAILABLE of the first attempt within UNREACHED_SECONDS (the service was not there to
    begin with: said at once, not after the whole wait). If the service never comes back,
    UNAVAILABLE says which service and for how long it was tried."""
    first_sent = time.monotonic()
    deadline = first_sent + seconds
    pause = REISSUE_BACKOFF
    attempts = 0
    while True:
        attempts += 1
        try:
            return await attempt(max(deadline - time.monotonic(), 0.001))
        except grpc.aio.AioRpcError as exc:
            now = time.monotonic()
            if exc.code() != grpc.StatusCode.UNAVAILABLE or (
                attempts == 1 and now - first_sent < UNREACHED_SECONDS
            ):
                raise
            if deadline - now <= pause:
                # A new message: the last attempt's google.rpc.Status (its message) is not
                # this status's, and a client checking it (grpcio-status) would refuse it.
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    exc.initial_metadata(),
                    grpc.aio.Metadata(
                        *((k, v) for k, v in exc.trailing_metadata() or () if k != STATUS_DETAILS)
                    ),
                    f"the {service} service went away and did not come back within "
                    f"{seconds:g} s ({attempts} attempts): {exc.details()}",
                ) from exc
        await asyncio.sleep(pause)
        pause = min(pause * 2, REISSUE_MAX_BACKOFF)


def _split_host_port(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), port


def _resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(
            f"cannot resolve {host!r}: {exc.strerror}; a name whose addresses change is better "
            f"given as dns:///{host}:PORT"
        ) from exc
    found = [ipaddress.ip_address(info[4][0]) for info in infos]
    # IPv4 first where a name has both, so one list can be of one family.
    return sorted(set(found), key=lambda ip: (ip.version, str(ip)))


def channel_target(address: str) -> str:
    """The gRPC target for `address`: a comma list of host:port becomes one `ipv4:`/`ipv6:`
    target over every replica; a single host:port or a `dns:///`… target is kept as it is."""
    address = address.strip()
    if address.startswith(_TARGET_SCHEMES) or "," not in address:
        return address
    by_family: dict[int, list[str]] = {4: [], 6: []}
    for item in filter(None, (part.strip() for part in address.split(","))):
        host, port = _split_host_port(item)
        ips = _resolve(host)
        version = ips[0].version
        by_family[version].extend(
            f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
            for ip in ips
            if ip.version == version
        )
    if by_family[4] and by_family[6]:
        raise ValueError(
            f"{address!r} mixes IPv4 and IPv6 replicas; gRPC balances over one family per list"
        )
    family = 4 if by_family[4] else 6
    if not by_family[family]:
        raise ValueError(f"{address!r} names no replica")
    return f"ipv{family}:" + ",".join(by_family[family])


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if "authorization" not in metadata:
        metadata.add("authorization", f"Bearer {token}")
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _Token:
    """What the four token interceptors share: the token, added to each call's metadata. (One
    object cannot serve all four kinds: the channel files an interceptor under the first kind
    it is an instance of.)"""

    def __init__(self, token: str) -> None:
        self.token = token

    async def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self.token), request)


class _TokenUnaryUnary(_Token, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _Token._intercept


class _TokenUnaryStream(_Token, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _Token._intercept


class _TokenStreamUnary(_Token, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _Token._intercept


class _TokenStreamStream(_Token, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _Token._intercept


def aio_channel(
    address: str,
    settings: Settings,
    token: str | None = None,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to `address` (one replica or several, see `channel_target`) that
    sends the API token (settings' unless given); `options`: gRPC channel options of the
    caller's, after the mesh's (the gateway bounds its receive windows with them)."""
    token = settings.api_token if token is None else token
    interceptors: list[Any] = (
        [
            _TokenUnaryUnary(token),
            _TokenUnaryStream(token),
            _TokenStreamUnary(token),
            _TokenStreamStream(token),
        ]
        if token
        else []
    )
    channel_options = [
        *client_options(settings),
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
        *(options or []),
    ]
    return grpc.aio.insecure_channel(
        channel_target(address), options=channel_options, interceptors=interceptors
    )
