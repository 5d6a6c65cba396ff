"""What one running gateway holds: settings, upstream channels, the route table, the hub, sockets.

Created by `create_app` and kept on `app.state.gateway`; the HTTP handlers, the socket protocol
and `/v1/status` read it, and shutdown drains it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sized
from typing import Any, Protocol

from amelia_common.settings import Settings
from amelia_gateway.hub import Hub, events_per_message
from amelia_gateway.routes import RouteTable
from amelia_gateway.upstream import Upstreams


class Connection(Protocol):
    """What the gateway needs of an open socket (`ws.Connection`): its backlog, its
    subscriptions and a way to close it."""

    @property
    def queued(self) -> int: ...

    @property
    def queued_bytes(self) -> int: ...

    @property
    def subscriptions(self) -> Sized: ...

    async def close(self, code: int, reason: str) -> None: ...


class Gateway:
    """The live state of one gateway process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.token = settings.api_token
        self.table = RouteTable()
        self.upstreams = Upstreams(settings)
        self.hub = Hub(
            self.upstreams,
            events_per_message(settings.WS_SEND_QUEUE),
            batch_window=settings.WS_BATCH_WINDOW_MS / 1000,
            limits=settings,
        )
        self.connections: dict[str, Connection] = {}
        self.http_streams: set[Any] = set()  # open NDJSON streams' gRPC calls
        self.http_streams_opening = 0  # NDJSON streams whose upstream call is being opened
        # The most bytes one socket held (its send queue and catch-up buffers) so far.
        self.queued_bytes_peak = 0
        self.stopping = asyncio.Event()
        self.started = time.time()
        self.counters = {
            "wsAccepted": 0,
            "wsRefusedFull": 0,
            "wsRefusedAuth": 0,
            "wsClosedSlow": 0,
            # Subscribes refused for one distinct filter too many (WS_MAX_FILTERS per socket,
            # GATEWAY_MAX_FILTERS in all).
            "wsRefusedFilters": 0,
            "httpRequests": 0,
            # NDJSON streams refused for one too many (GATEWAY_MAX_HTTP_STREAMS).
            "httpRefusedStreams": 0,
        }

    def stats(self) -> dict[str, Any]:
        """Connection and subscription counts for /v1/status (and tests)."""
        queued = sum(c.queued for c in self.connections.values())
        return {
            "connections": len(self.connections),
            "maxConnections": self.settings.WS_MAX_CONNECTIONS,
            "subscriptions": sum(len(c.subscriptions) for c in self.connections.values()),
            "queuedMessages": queued,
            "queuedBytes": sum(c.queued_bytes for c in self.connections.values()),
            "httpStreams": len(self.http_streams),
            "maxHttpStreams": self.settings.GATEWAY_MAX_HTTP_STREAMS,
            **self.hub.stats(),
            **self.counters,
            "wsQueuedBytesPeak": self.queued_bytes_peak,
        }

    async def drain(self, reason: str = "server shutting down") -> None:
        """Stop taking sockets, close every socket with 1001, end NDJSON streams, stop upstreams."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        closing = [c.close(1001, reason) for c in list(self.connections.values())]
        for call in list(self.http_streams):
            call.cancel()
        if closing:
            async with asyncio.timeout(10):
                await asyncio.gather(*closing, return_exceptions=True)
        await self.hub.close()

    async def close(self) -> None:
        await self.drain()
        await self.upstreams.close()
