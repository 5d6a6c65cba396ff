"""The gateway's ASGI application: `create_app(settings)`.

Routes: `/v1/...` (the route table, HTTP/JSON and NDJSON streams), `/ws` (the socket protocol),
`/openapi.json`, `/healthz`, `/v1/status`, and static files at `/` from `amelia_gateway/static/`
(where the dashboard goes). CORS from CORS_ORIGINS, GZip for large responses (never for NDJSON
streams, which must flush line by line).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from amelia_common.logging import get_logger
from amelia_common.settings import Settings
from amelia_gateway import http_api, openapi, status, ws
from amelia_gateway.http_api import NDJSON
from amelia_gateway.state import Gateway

log = get_logger("amelia.gateway")

STATIC_DIR = Path(__file__).with_name("static")
METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]
GZIP_MINIMUM_BYTES = 1024


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi.build_document())


async def root(request: Request) -> Response:
    return JSONResponse(
        {"name": "Amelia gateway", "openapi": "/openapi.json", "websocket": "/ws", "api": "/v1"}
    )


class GatewayApp(Starlette):
    """Starlette, with `/ws` served before the middleware stack.

    The socket handler gets the server's own `send`, so it can drop the TCP connection of a
    client that stopped reading (a close frame cannot reach it). HTTP middleware (CORS, GZip)
    does nothing for WebSockets anyway.
    """

    gateway: Gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            scope["app"] = self
            await ws.serve(self.gateway, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> Starlette:
    """A gateway for `settings` (upstream addresses, token, limits)."""
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not settings.api_token:
            log.warning(
                "no AMELIA_API_TOKEN set: the gateway accepts every client; "
                "it listens on loopback only"
            )
        yield
        await gateway.close()

    routes: list[Route | Mount] = [
        Route("/healthz", status.healthz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/v1/status", status.status, methods=["GET"]),
        Route("/v1/{path:path}", http_api.endpoint, methods=METHODS),
    ]
    if (STATIC_DIR / "index.html").exists():
        routes.append(Mount("/", app=StaticFiles(directory=STATIC_DIR, html=True), name="static"))
    else:
        routes.append(Route("/", root, methods=["GET"]))
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.CORS_ORIGINS,
            allow_methods=METHODS,
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "X-Request-Id",
                "X-Request-Timeout",
                "grpc-timeout",
            ],
            expose_headers=["X-Request-Id"],
            allow_credentials=False,
            max_age=600,
        ),
        Middleware(
            GZipMiddleware,
            minimum_size=GZIP_MINIMUM_BYTES,
            exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, NDJSON),
        ),
    ]
    app = GatewayApp(routes=routes, middleware=middleware, lifespan=lifespan)
    app.gateway = gateway
    app.state.gateway = gateway
    return app
