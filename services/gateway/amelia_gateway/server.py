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
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from amelia_common.logging import get_logger
from amelia_common.settings import Settings
from amelia_gateway.app import create_app
from amelia_gateway.state import Gateway

log = get_logger("amelia.gateway")

# Client messages are small JSON; anything larger is refused by the server (close 1009).
WS_MAX_MESSAGE_BYTES = 1024 * 1024
# How long a socket failed by the client's data (1009, 1002) keeps reading what it still sends.
LINGER_SECONDS = 10.0


class LingeringWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, closing a socket the client's data failed (a message over
    `ws_max_size`: 1009, a protocol error: 1002) without a TCP reset.

    uvicorn sends the close frame (websockets' reason names the limit: `frame with 20971520 bytes
    exceeds limit of 1048576 bytes`) and closes the TCP connection at once, while the client is
    still sending the rest of its 20 MiB; the kernel then answers that data with a reset, and a
    client whose send fails on it, or whose kernel drops the unread close frame, sees a reset
    and no close code. Here the close frame is followed by our FIN only, and whatever the client
    still sends is read and dropped (a lingering close, as web servers do) until it closes its
    side or LINGER_SECONDS pass.
    """

    lingering = False

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # the rest of a refused message: dropped unparsed
        super().data_received(data)

    def handle_parser_exception(self) -> None:
        close = self.conn.close_sent
        assert close is not None
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        )
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        # As a close_timer, which uvicorn waits for instead of closing when the app returns.
        self.close_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)


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
        ws=LingeringWebSocket,
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
