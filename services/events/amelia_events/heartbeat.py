"""StreamEvents heartbeats: a stream that asked for them (`heartbeat_seconds`) is never silent.

An open stream outlasts a NATS outage of any length (docs/events.md), so without them a client
cannot tell a quiet log from a dead stream, nor from one waiting for NATS. With them, every
`heartbeat_seconds` of silence brings a `StreamHeartbeat`: the last sequence sent (where to
resume from) and whether the service reads the log now, naming NATS while it does not — like
NATS's own idle heartbeats on a consumer, or a Temporal activity's. Opt-in: older clients, which
would read a heartbeat as an empty event, never get one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from google.protobuf import timestamp_pb2
from nats.aio.client import Client as NATS

from amelia.v1 import events_pb2
from amelia_common.errors import InvalidArgumentError
from amelia_common.nats_client import nats_servers
from amelia_common.settings import Settings

MAX_HEARTBEAT_SECONDS = 3600

# A stream's message: serialized already (`fanout.Item`), or a heartbeat.
Message = bytes | events_pb2.StreamEventsResponse


class Position(Protocol):
    """Where a stream is: the consumer it reads through (None while being recreated) and the
    last sequence it sent (or started after)."""

    @property
    def consumer_name(self) -> str | None: ...

    @property
    def sent(self) -> int: ...


def heartbeat_seconds(request: events_pb2.StreamEventsRequest) -> int:
    """The request's heartbeat interval (0: none), or INVALID_ARGUMENT past the bound."""
    every = request.heartbeat_seconds
    if every > MAX_HEARTBEAT_SECONDS:
        raise InvalidArgumentError(
            f"heartbeat_seconds {every} is too long: at most {MAX_HEARTBEAT_SECONDS} (0: none)"
        )
    return every


class Heartbeats:
    """The heartbeats of one stream at `position`."""

    def __init__(self, position: Position, nc: NATS, settings: Settings) -> None:
        self.position = position
        self.nc = nc
        self.servers = ", ".join(nats_servers(settings))
        self.down_since: float | None = None

    def beat(self) -> Message:
        """A heartbeat saying whether the log is read now (NATS connected, the reader's
        JetStream consumer in place) and, when not, since when and where the stream goes on."""
        reachable = self.nc.is_connected and self.position.consumer_name is not None
        sent = self.position.sent
        status = ""
        if reachable:
            self.down_since = None
        else:
            now = time.monotonic()
            self.down_since = now if self.down_since is None else self.down_since
            state = "did not answer" if self.nc.is_connected else "is unreachable"
            status = (
                f"events: NATS at {self.servers} {state} since {now - self.down_since:.0f}s; "
                f"the stream carries on after sequence {sent} once it is back"
            )
        stamp = timestamp_pb2.Timestamp()
        stamp.GetCurrentTime()
        return events_pb2.StreamEventsResponse(
            heartbeat=events_pb2.StreamHeartbeat(
                time=stamp, last_sequence=sent, log_reachable=reachable, status=status
            )
        )

    async def around(
        self, next_message: Callable[[], Awaitable[Message | None]], every: float
    ) -> AsyncIterator[Message]:
        """The messages `next_message` gives until it gives None, and a heartbeat after every
        `every` seconds that none came. The pending read is never cancelled by a heartbeat."""
        while True:
            pending = asyncio.ensure_future(next_message())
            try:
                while not (await asyncio.wait({pending}, timeout=every))[0]:
                    yield self.beat()
                message = pending.result()
            finally:
                if not pending.done():  # the stream ends (client gone, shutdown)
                    pending.cancel()
                    await asyncio.wait({pending})
            if message is None:
                return
            yield message
