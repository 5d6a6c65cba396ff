"""A kept-alive connection the gateway closes as idle just as the TUI sends its next request on
it is not an outage (QA s26: "the gateway at http://… is not answering (Server disconnected
without sending a response.) — is the mesh running?", twice, while the gateway was fine).

uvicorn closes a connection idle for its keep-alive timeout (5 s) without a word; a request the
client wrote on it at that moment gets no answer. The server here is a real HTTP/1.1 server on a
socket that does that to every request that reuses a connection: it answers a connection's
first request (keep-alive) and closes the connection, unanswered, when another one comes on it.
`GatewayApi` sends a GET — and a POST carrying a requestId, which the service takes once — once
more on a new connection; a POST without one (cancel) is never sent twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from amelia_cli.tui.gateway import ApiError, GatewayApi


@dataclass
class IdleClosingServer:
    """Answers each connection's first request; closes it unanswered at the next one."""

    port: int = 0
    received: list[str] = field(default_factory=list)  # "METHOD path", answered or not
    connections: int = 0
    close_every_request: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                method, path, _ = lines[0].split(" ", 2)
                self.received.append(f"{method} {path.split('?')[0]}")
                if served or self.close_every_request:
                    # The keep-alive timeout fired as the request came: closed, no answer.
                    writer.transport.abort()
                    return
                served += 1
                body = json.dumps({"runs": [], "run": {"name": "runs/x"}}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: keep-alive\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[IdleClosingServer]:
    state = IdleClosingServer()
    listening = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield state
        listening.close()


async def test_a_get_on_a_connection_closed_as_idle_is_sent_again(
    server: IdleClosingServer,
) -> None:
    api = GatewayApi(f"http://127.0.0.1:{server.port}")
    try:
        for _ in range(4):  # each after the first reuses the connection the one before opened
            assert await api.list_runs() == []
            assert (await api.get_run("runs/x"))["name"] == "runs/x"
        # Sent twice each time the connection was reused, answered on a new one.
        assert len(server.received) == 15, server.received
        assert server.connections == 8
    finally:
        await api.aclose()


async def test_a_post_is_sent_again_only_with_a_request_id(server: IdleClosingServer) -> None:
    api = GatewayApi(f"http://127.0.0.1:{server.port}")
    try:
        await api.list_runs()  # the connection the next request reuses
        run = await api.resume_run("runs/x", "approve", "request-1")
        assert run["name"] == "runs/x"
        assert server.received[1:] == ["POST /v1/runs/x:resume"] * 2
        # A cancel carries no id that makes it safe: it is not sent twice.
        with pytest.raises(ApiError) as refused:
            await api.cancel_run("runs/x", "not needed")
        assert refused.value.code == "UNAVAILABLE"
        assert server.received[3:] == ["POST /v1/runs/x:cancel"], server.received
    finally:
        await api.aclose()


async def test_once_more_only(server: IdleClosingServer) -> None:
    """A gateway that closes every connection unanswered is not answering: said after the
    second try, not retried for ever."""
    server.close_every_request = True
    api = GatewayApi(f"http://127.0.0.1:{server.port}")
    try:
        with pytest.raises(ApiError) as failed:
            await api.list_runs()
        assert "is not answering" in str(failed.value)
        assert server.received == ["GET /v1/runs"] * 2
    finally:
        await api.aclose()
