"""A real local HTTP server receiving run webhooks: it records each POST and answers with the
next status of its script (then `then`), as a receiver that fails a few times would."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

REASONS = {200: "OK", 204: "No Content", 500: "Internal Server Error", 503: "Unavailable"}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    answered: int


@dataclass
class Receiver:
    script: list[int] = field(default_factory=list)
    then: int = 200
    received: list[Received] = field(default_factory=list)
    port: int = 0
    # When set, each answer waits for it (the request is recorded before): a test can act while
    # a delivery is in flight.
    answer_after: asyncio.Event | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/run"

    async def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        """The first `count` requests, once they have arrived."""
        await self.wait_until(lambda: len(self.received) >= count, timeout)
        return self.received[:count]

    async def wait_until(self, holds: Callable[[], bool], timeout: float = 60) -> None:
        """Until `holds()` after a request has been recorded (or at once)."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(holds)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in head[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = self.script.pop(0) if self.script else self.then
            async with self._arrived:
                self.received.append(Received(path, headers, json.loads(body), status))
                self._arrived.notify_all()
            if self.answer_after is not None:
                await self.answer_after.wait()
            writer.write(
                f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def receiving(*script: int, then: int = 200) -> AsyncIterator[Receiver]:
    """A receiver on a free local port, answering `script` then `then`."""
    receiver = Receiver(list(script), then)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()
