"""Running the gateway on uvicorn, with a shutdown that drains sockets first.

uvicorn's own shutdown closes WebSockets with 1012 and no reason, and waits on open streams.
`GatewayServer` first tells every socket the server is going away (1001, with a reason, after
which clients reconnect and resume from their last sequence) and ends NDJSON streams, then
lets uvicorn stop accepting and drain in-flight HTTP requests.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from starlette.applications import Starlette

from amelia_common.logging import get_logger
from amelia_common.settings import Settings
from amelia_gateway.app import create_app
from amelia_gateway.state import Gateway

log = get_logger("amelia.gateway")

# Client messages are small JSON; anything larger is refused by the server (close 1009).
WS_MAX_MESSAGE_BYTES = 1024 * 1024


class GatewayServer(uvicorn.Server):
    """uvicorn.Server whose shutdown drains the gateway (sockets get 1001) before uvicorn's."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting first
        try:
            async with asyncio.timeout(15):
                await self.gateway.drain()
        except Exception:
            log.exception("draining the gateway failed")
        await super().shutdown(sockets)


def config(
    app: Starlette, settings: Settings, *, host: str | None = None, port: int | None = None
) -> uvicorn.Config:
    """uvicorn settings for the gateway: no per-message deflate (fan-out would compress each
    event once per socket), bounded client messages, graceful shutdown bounded by the gRPC grace.

    No protocol-level pings from uvicorn: a client far behind in reading answers a ping only after
    the data queued before it, so uvicorn closed it (1006, no reason) after 20 s instead of the
    gateway's slow-consumer close (4008, with the sequence to resume from). The gateway's own
    heartbeat (`WS_HEARTBEAT_INTERVAL`, 4000 after three silent intervals) finds dead peers."""
    return uvicorn.Config(
        app,
        host=host if host is not None else settings.bind_host,
        port=settings.PORT if port is None else port,
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        timeout_graceful_shutdown=max(1, int(settings.GRPC_SHUTDOWN_GRACE_SECONDS)),
        log_config=None,
        access_log=False,
        lifespan="on",
    )


def build_server(
    settings: Settings, *, host: str | None = None, port: int | None = None
) -> GatewayServer:
    """A ready-to-run server for a new gateway app (`await server.serve()`)."""
    app = create_app(settings)
    gateway: Gateway = app.state.gateway
    return GatewayServer(config(app, settings, host=host, port=port), gateway)
