"""What every HTTP request goes through before its route: a request id, the method check, CORS,
and the last resort that turns any escaped exception into a google.rpc.Status 500.

Whatever goes wrong, a client gets the same kind of answer: a JSON google.rpc.Status body with
the request id, never Starlette's or uvicorn's plain-text "Internal Server Error" / "Method Not
Allowed". The methods a path takes come from one place (`MethodsFor`, the route table plus the
gateway's own routes), so the 405's `Allow`, OPTIONS and CORS preflights always agree with it.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import grpc
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amelia_common.grpc_server import request_id_of
from amelia_common.logging import get_logger
from amelia_gateway.errors import GatewayError, error_response, internal

log = get_logger("amelia.gateway.http")

# The methods a path takes, or None for a path the gateway does not have.
MethodsFor = Callable[[str], tuple[str, ...] | None]

_CODE_FOR_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def request_id(scope: Scope) -> str:
    """The request's id: the client's `X-Request-Id` when well formed (the services' rule for
    their `x-request-id`, `grpc_server.request_id_of`), else a new one; fixed for the whole
    request (routes, error bodies and logs all show the same)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    rid: str | None = state.get("request_id")
    if rid is None:
        rid = request_id_of(Headers(scope=scope).get("x-request-id", ""))
        state["request_id"] = rid
    return rid


def allow_header(methods: tuple[str, ...]) -> str:
    return ", ".join((*methods, "OPTIONS"))


def not_allowed(method: str, path: str, methods: tuple[str, ...]) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{method} is not allowed on {path}; use {', '.join(methods)}",
        http_status=405,
        headers={"Allow": allow_header(methods)},
    )


class CatchAll:
    """Outermost: gives the request its id, and answers an escaped exception with a JSON 500.

    The exception is logged with the request id (the only place its details go); the client
    gets the id to quote. Once a response has started (an NDJSON stream) nothing can be
    answered any more: the exception goes on to the server, which drops the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception(
                "unhandled error", method=scope["method"], path=scope["path"], request_id=rid
            )
            if started:
                raise
            await error_response(internal(f"request id {rid}"), rid)(scope, receive, send)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (a static file not found, …) as google.rpc.Status JSON."""
    assert isinstance(exc, HTTPException)
    code = _CODE_FOR_HTTP.get(exc.status_code, grpc.StatusCode.UNKNOWN)
    detail = exc.detail or HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404:
        detail = f"no such path: {request.scope['path']}"
    error = GatewayError(code, detail, http_status=exc.status_code, headers=exc.headers)
    return error_response(error, request_id(request.scope))


class MethodGuard:
    """405 (with `Allow`) for a method a known path does not take, OPTIONS answered with `Allow`.

    Unknown paths pass through to their 404. CORS preflights never get here (`RouteCORS`
    answers them first).
    """

    def __init__(self, app: ASGIApp, methods_for: MethodsFor) -> None:
        self.app = app
        self.methods_for = methods_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            methods = self.methods_for(scope["path"])
            method = scope["method"]
            if methods is not None and method not in methods:
                rid = request_id(scope)
                if method == "OPTIONS":
                    headers = {"Allow": allow_header(methods), "X-Request-Id": rid}
                    await Response(status_code=204, headers=headers)(scope, receive, send)
                else:
                    error = not_allowed(method, scope["path"], methods)
                    await error_response(error, rid)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RouteCORS(CORSMiddleware):
    """CORS whose preflight offers, and allows, only the methods of the path asked about."""

    def __init__(self, app: ASGIApp, methods_for: MethodsFor, **options: Any) -> None:
        super().__init__(app, **options)
        self.methods_for = methods_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if (
            headers is None
            or scope["method"] != "OPTIONS"
            or "origin" not in headers
            or "access-control-request-method" not in headers
        ):
            await super().__call__(scope, receive, send)
            return
        rid = request_id(scope)
        path = scope["path"]
        methods = self.methods_for(path)
        if methods is None:
            error = GatewayError(grpc.StatusCode.NOT_FOUND, f"no such path: {path}")
            await error_response(error, rid)(scope, receive, send)
            return
        response = self.preflight_response(request_headers=headers)
        requested = headers["access-control-request-method"]
        refusals = [] if response.status_code < 400 else [bytes(response.body).decode()]
        if requested not in methods:
            refusals.append(f"method {requested} is not allowed on {path}")
        if refusals:
            error = GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT, "CORS preflight refused: " + "; ".join(refusals)
            )
            await error_response(error, rid)(scope, receive, send)
            return
        response.headers["Access-Control-Allow-Methods"] = allow_header(methods)
        await response(scope, receive, send)
