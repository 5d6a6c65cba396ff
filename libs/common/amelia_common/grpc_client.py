"""gRPC channels from one service (or the CLI, or the gateway) to another.

The API token travels as `authorization: Bearer …` metadata on every call (added by an
interceptor, so no call site can forget it), and the channel uses the servers' message size and
keepalive limits.
"""

from __future__ import annotations

from typing import Any

import grpc

from amelia_common.settings import Settings


def client_options(settings: Settings) -> list[tuple[str, Any]]:
    """Message size and keepalive limits every channel of the mesh uses (servers add theirs)."""
    return [
        ("grpc.max_send_message_length", settings.GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", settings.GRPC_MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


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


class _TokenUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self.token), request)


class _TokenUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self.token), request)


class _TokenStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self.token), request_iterator)


class _TokenStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self.token), request_iterator)


def aio_channel(address: str, settings: Settings, token: str | None = None) -> grpc.aio.Channel:
    """An asyncio channel to `address` that sends the API token (settings' unless given)."""
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
    return grpc.aio.insecure_channel(
        address, options=client_options(settings), interceptors=interceptors
    )
