"""Hostile socket messages: each gets an `error` (code 3) and the socket stays open and usable.

Messages go through the same JSON parser as HTTP bodies (depth, digits, NaN/Infinity, lone
surrogates), and a message the gateway fails on in a way nobody foresaw is answered with an
error too (INTERNAL), never a dropped socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

import pytest
from gateway_helpers import Client, Publisher, RunningGateway, new_subject

DEPTH = 100_000

# (raw text frame, a word the error message must contain)
HOSTILE_MESSAGES: dict[str, tuple[str, str]] = {
    "lone surrogate in the id": ('{"type":"subscribe","id":"\\ud800","filter":{}}', "surrogate"),
    "lone surrogate in the subject": (
        '{"type":"subscribe","id":"s","filter":{"subject":"runs/\\udfff"}}',
        "surrogate",
    ),
    "lone surrogate in a type": (
        '{"type":"subscribe","id":"s","filter":{"types":["run.\\udbff"]}}',
        "surrogate",
    ),
    "a key given twice": ('{"type":"subscribe","id":"s","id":"t","filter":{}}', "more than once"),
    "nested past the recursion limit": ('{"a":' * DEPTH + "1" + "}" * DEPTH, "nested"),
    "nested arrays": ('{"type":"ping","a":' + "[" * DEPTH + "]" * DEPTH + "}", "nested"),
    "nested 40 deep": ('{"type":"ping","a":' + '{"a":' * 40 + "1" + "}" * 40 + "}", "nested"),
    "5000-digit since": ('{"type":"subscribe","id":"s","since":' + "9" * 5000 + "}", "digits"),
    "5000-digit since as text": (
        '{"type":"subscribe","id":"s","since":"' + "9" * 5000 + '"}',
        "since",
    ),
    "superscript digit since": ('{"type":"subscribe","id":"s","since":"\\u00b2"}', "since"),
    "NaN": ('{"type":"subscribe","id":"s","since":NaN}', "NaN"),
    "Infinity id": ('{"type":"subscribe","id":Infinity}', "Infinity"),
    "1e999 id": ('{"type":"subscribe","id":1e999}', "finite"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MESSAGES))
async def test_a_hostile_message_gets_an_error_and_the_socket_stays_open(
    gateway: RunningGateway, publisher: Publisher, case: str
) -> None:
    text, word = HOSTILE_MESSAGES[case]
    client = await Client.connect(gateway.ws_url)
    await client.ws.send(text)
    reply = await client.recv_type("error")
    assert reply["error"]["code"] == 3, reply
    assert word in reply["error"]["message"], reply
    assert reply["final"] is True
    assert reply["subscription"] in (None, "s"), reply

    # The same socket still works: a valid subscription gets its events.
    subject = new_subject()
    await client.subscribe("ok", filter={"subject": subject})
    sequence = await publisher.publish(subject)
    assert [m["sequence"] for m in await client.events(1)] == [sequence]
    await client.close()


async def test_every_hostile_message_in_a_row_on_one_socket(
    gateway: RunningGateway, publisher: Publisher
) -> None:
    client = await Client.connect(gateway.ws_url)
    for text, _ in HOSTILE_MESSAGES.values():
        await client.ws.send(text)
        assert (await client.recv_type("error"))["error"]["code"] == 3
    await client.ws.send(json.dumps({"type": "ping"}))
    assert (await client.recv_type("pong"))["type"] == "pong"
    subject = new_subject()
    await client.subscribe(7, filter={"subject": subject})
    sequence = await publisher.publish(subject)
    assert [m["sequence"] for m in await client.events(1)] == [sequence]
    await client.close()


def _send_whole_frame_then_read(port: int, size: int) -> tuple[OSError | None, bytes]:
    """A client that writes a whole text frame of `size` bytes before it reads anything (as a
    blocking client does): what its send raised, and every byte the gateway sent after the
    handshake, up to the end of the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                "GET /ws HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(4096)
        received = received.split(b"\r\n\r\n", 1)[1]
        header = bytes([0x81, 0xFF]) + struct.pack("!Q", size) + bytes(4)  # masked with zeros
        error: OSError | None = None
        try:
            sock.sendall(header + b"x" * size)
        except OSError as exc:
            error = exc
        while chunk := sock.recv(65536):
            received += chunk
        return error, received


async def test_a_20_mib_message_is_closed_with_1009_naming_the_limit_not_reset(
    gateway: RunningGateway,
) -> None:
    """A message over the 1 MiB limit, written whole before reading: the client's send completes
    (the gateway reads and drops the rest instead of resetting the connection), then it reads a
    close frame 1009 whose reason names the limit, then the end of the connection. Before: the
    gateway closed at once, the rest of the 20 MiB got a reset (send: ECONNRESET/EPIPE)."""
    error, received = await asyncio.to_thread(
        _send_whole_frame_then_read, gateway.port, 20 * 1024 * 1024
    )
    assert error is None, error
    close = received[received.index(b"\x88") :]  # after the welcome message
    length = close[1]
    code = struct.unpack("!H", close[2:4])[0]
    reason = close[4 : 2 + length].decode()
    assert code == 1009, close
    assert "1048576" in reason and "20971520" in reason, reason
    # The socket keeps serving others.
    client = await Client.connect(gateway.ws_url)
    await client.send({"type": "ping"})
    assert (await client.recv_type("pong"))["type"] == "pong"
    await client.close()
