"""The gateway's ASGI application: `create_app(settings)`.

Routes: `/v1/...` (the route table, HTTP/JSON and NDJSON streams), `/ws` (the socket protocol),
`/openapi.json`, `/healthz`, `/v1/status`, `/metrics` (Prometheus), and static files at `/` from
`amelia_gateway/static/` (where the dashboard goes). CORS from CORS_ORIGINS, GZip for large
responses (never for NDJSON streams, which must flush line by line). `methods_for` is the one
answer to "which methods does this path take", for the 405s, OPTIONS and CORS preflights (see
middleware.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, request_response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from amelia_common import metrics, telemetry
from amelia_common.logging import get_logger
from amelia_common.settings import Settings
from amelia_gateway import http_api, openapi, status, ws
from amelia_gateway.middleware import CatchAll, MethodGuard, MethodsFor, RouteCORS, http_exception
from amelia_gateway.requests import NDJSON
from amelia_gateway.routes import RouteTable
from amelia_gateway.state import Gateway

log = get_logger("amelia.gateway")

STATIC_DIR = Path(__file__).with_name("static")
GZIP_MINIMUM_BYTES = 1024
READ = ("GET", "HEAD")
# The gateway's own routes (besides the route table's `/v1/...`); everything else outside
# `/v1/` is a static file.
LOCAL_ROUTES: dict[str, tuple[str, ...]] = {
    "/healthz": READ,
    "/openapi.json": READ,
    "/v1/status": READ,
    "/metrics": READ,
}


def methods_for(table: RouteTable) -> MethodsFor:
    """Which methods a path takes (None: no such path), from the route table and LOCAL_ROUTES."""

    def methods(path: str) -> tuple[str, ...] | None:
        if path in LOCAL_ROUTES:
            return LOCAL_ROUTES[path]
        if path == "/v1" or path.startswith("/v1/"):
            return table.methods(path) or None
        return READ

    return methods


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi.build_document())


async def metrics_text(request: Request) -> Response:
    """Prometheus metrics of this gateway process (open, like /healthz: no secrets in them)."""
    body, content_type = metrics.exposition()
    return Response(body, headers={"Content-Type": content_type})


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
    metrics.track_gateway(gateway)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not settings.api_token:
            log.warning(
                "no AMELIA_API_TOKEN set: the gateway accepts every client; "
                "it listens on loopback only"
            )
        yield
        await gateway.close()

    methods = methods_for(gateway.table)
    routes: list[Route | Mount] = [
        Route("/healthz", status.healthz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/v1/status", status.status, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        # Every method (a Mount takes all): MethodGuard has answered those a known path does not
        # take, so what reaches the endpoint is either served or a 404.
        Mount("/v1", app=request_response(http_api.endpoint)),
    ]
    if (STATIC_DIR / "index.html").exists():
        routes.append(Mount("/", app=StaticFiles(directory=STATIC_DIR, html=True), name="static"))
    else:
        routes.append(Route("/", root, methods=["GET"]))
    middleware = [
        *(Middleware(cls, **options) for cls, options in telemetry.asgi_middleware()),
        Middleware(CatchAll),
        Middleware(
            RouteCORS,
            methods_for=methods,
            allow_origins=settings.CORS_ORIGINS,
            allow_methods=[*READ, *gateway.table.all_methods],
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
        Middleware(MethodGuard, methods_for=methods),
        Middleware(
            GZipMiddleware,
            minimum_size=GZIP_MINIMUM_BYTES,
            exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, NDJSON),
        ),
    ]
    app = GatewayApp(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception},
    )
    app.gateway = gateway
    app.state.gateway = gateway
    return app
