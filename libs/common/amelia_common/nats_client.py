"""Connecting to NATS the same way in every service.

The connection reconnects forever with a short wait, so a NATS restart is a pause, not an outage;
the first connect is retried until `timeout` so services can start before NATS does. Health
checks read `is_connected`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NATS

from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.nats")


def nats_servers(settings: Settings) -> list[str]:
    """The NATS URLs to use: `NATS_URL` (comma-separated) or the embedded server's."""
    if settings.NATS_URL:
        return [u.strip() for u in settings.NATS_URL.split(",") if u.strip()]
    return [f"nats://127.0.0.1:{settings.EMBEDDED_NATS_PORT}"]


async def connect_nats(settings: Settings, name: str, timeout: float = 60.0) -> NATS:
    """Connect, waiting up to `timeout` for NATS to answer, then reconnecting forever.

    nats-py keeps retrying the first connection itself when reconnects are unlimited, so the
    wait is bounded here rather than by its options.
    """
    last_error: list[str] = []

    async def on_error(exc: Exception) -> None:
        message = str(exc) or repr(exc)
        if not last_error or last_error[-1] != message:
            log.warning("nats error", error=message)
        last_error[:] = [message]

    client: list[NATS] = []

    async def on_disconnect() -> None:
        if client and client[0].is_closed:
            log.debug("nats connection closed")  # a deliberate close, not an outage
        else:
            log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    servers = nats_servers(settings)
    try:
        nc = await asyncio.wait_for(
            nats.connect(
                servers=servers,
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                ping_interval=5,
                max_outstanding_pings=3,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            ),
            timeout,
        )
    except TimeoutError as exc:
        reason = last_error[-1] if last_error else "no answer"
        raise ConnectionError(
            f"cannot reach NATS at {', '.join(servers)} after {timeout:.0f}s: {reason}"
        ) from exc
    client.append(nc)
    return nc


def nats_health(nc: NATS) -> Callable[[], Awaitable[bool]]:
    """A health probe for `GrpcService.dependencies`."""

    async def probe() -> bool:
        if not nc.is_connected:
            return False
        await nc.flush(timeout=2)
        return True

    return probe
