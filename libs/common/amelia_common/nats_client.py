"""Connecting to NATS the same way in every service.

The connection reconnects forever with a short wait, so a NATS restart is a pause, not an outage;
a server that stops answering without closing its socket (a frozen node: SIGSTOP, a hung VM) is
noticed by the client's PINGs going unanswered and left for another node of the cluster within a
few seconds (`PING_INTERVAL`, `MAX_OUTSTANDING_PINGS`);
the first connect is retried until `timeout` so services can start before NATS does. Health
checks read `is_connected`. Streams are created the same way too (`ensure_stream`), safe when
many replicas start at once.

A connection the *server* closes with a protocol error (`-ERR`, e.g. "maximum control line
exceeded") is another matter: nats-py then closes the client for good, never reconnects, and
every subscription, consumer and KV watch made on it is gone. Nothing can be resumed on that
client, so the process stops instead of living on cut off (NOT_SERVING while NATS is fine, every
call refused): it logs an error naming the cause and sends itself SIGTERM, the graceful
shutdown every service has (`GrpcService.serve`), and its supervisor (`amelia up`, Kubernetes)
starts it again with a new connection. A close we asked for (`close`, `drain`, leaving `async
with`) does not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.nats")

# A server whose socket stays open but that answers nothing (SIGSTOP, a hung VM) is only seen by
# unanswered PINGs: with 2 outstanding allowed at one every 2 s, the client leaves it 4-6 s after
# it froze (it was 15-20 s with nats-py's 5 s x 3 we had). A PING and its PONG are 6 bytes each,
# one every 2 s per connection: nothing next to the traffic of a run.
PING_INTERVAL = 2
MAX_OUTSTANDING_PINGS = 2


class Client(NATS):
    """nats-py's client, knowing whether its close was asked for (`close`, `drain`) or imposed by
    the server (see the module's docstring)."""

    closing = False

    async def close(self) -> None:
        self.closing = True
        await super().close()

    async def drain(self) -> None:
        self.closing = True
        await super().drain()

    async def __aexit__(self, *exc_info: object) -> None:
        self.closing = True
        await super().__aexit__(*exc_info)


def stop_process(why: str, **details: object) -> None:
    """Log `why` as an error and stop this process the way SIGTERM does (gracefully, where the
    process handles SIGTERM), for its supervisor to start it again."""
    log.error(f"{why}: stopping this process so that its supervisor starts it again", **details)
    os.kill(os.getpid(), signal.SIGTERM)


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

    client: list[Client] = []

    async def on_disconnect() -> None:
        if not client or not client[0].is_closed:
            log.warning("nats disconnected")
        elif client[0].closing:
            log.debug("nats connection closed")  # a deliberate close, not an outage

    async def on_closed() -> None:
        if not client or client[0].closing:
            return  # ours (or a first connect given up on: that raised already)
        cause = client[0].last_error
        stop_process(
            "NATS closed this process's connection for good; nats-py does not reconnect after "
            "that, so every subscription and consumer on it is gone",
            client=name,
            cause=(str(cause) or repr(cause)) if cause is not None else "unknown",
        )

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    servers = nats_servers(settings)
    try:
        async with asyncio.timeout(timeout):
            nc = Client()
            await nc.connect(
                servers=servers,
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # typed int; a float works
                connect_timeout=2,
                ping_interval=PING_INTERVAL,
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                closed_cb=on_closed,
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


# JetStream's "stream name already in use": another process created it between our look and add.
_STREAM_NAME_IN_USE = 10058
# JetStream's "no suitable peers for placement" (a replica's peer offline): a cluster just
# started, or a node restarting, before the meta leader has heard from every peer. Not ready
# yet, as a missing leader is (CI: a 3-node cluster's first R3 stream was refused so once).
_NO_PEERS_YET = 10005


async def ensure_stream(js: JetStreamContext, config: api.StreamConfig, wait: float = 60.0) -> None:
    """Create the stream `config` names, or bring it in line with `config`.

    Every replica of a service does this as it starts, often all at the same moment: the loser
    of the race to create finds the stream made; a stream already as configured is left alone
    (an update is a cluster-wide proposal that can outlast nats-py's API timeout while a cluster
    elects a leader, and crashed racing replicas); JetStream not answering yet (no leader, a
    node restarting) or not placing the replicas yet (a peer not heard from) is retried for up
    to `wait` seconds before the error is raised.
    """
    name = config.name or ""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = 0.2
    while True:
        try:
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(config)
                    return
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code == _NO_PEERS_YET and loop.time() + delay <= deadline:
                        log.info("JetStream peers not ready, retrying", stream=name)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 2.0)
                        continue
                    if exc.err_code != _STREAM_NAME_IN_USE:
                        raise
                    continue  # made by another process meanwhile: compare with it
            if stream_config_differs(info.config, config):
                await js.update_stream(config)
            return
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
            if loop.time() + delay > deadline:
                raise
            log.info("JetStream not ready, retrying", stream=name, error=repr(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def stream_config_differs(existing: api.StreamConfig, wanted: api.StreamConfig) -> bool:
    """Whether any field `wanted` sets has another value in `existing` (fields left None in
    `wanted` are the server's to choose)."""
    for field in dataclasses.fields(wanted):
        value = getattr(wanted, field.name)
        if value is None:
            continue
        current = getattr(existing, field.name)
        if field.name == "subjects":
            if sorted(value) != sorted(current or []):
                return True
        elif current != value:
            return True
    return False
