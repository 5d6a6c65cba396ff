"""What the gateway answers where it used to answer wrong (QA F6).

- F6a: an NDJSON stream that cannot open (the events service cannot create its consumer: NATS
  does not answer) gets the HTTP status of its error and the google.rpc.Status body, not a 200
  whose first line is the error. The nats-server is the test's own, frozen with SIGSTOP.
- F6c: socket error messages say what is missing, never Python's `None`.
- F6d: a request body with a Content-Encoding is a 415 saying the encoding is not supported, not
  a 400 "not UTF-8 text".
"""

from __future__ import annotations

import gzip
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_helpers import Client, RunningGateway, new_subject, start_gateway

from amelia_common.embedded import EmbeddedNats, free_port


async def test_socket_errors_say_what_is_missing(gateway: RunningGateway) -> None:
    client = await Client.connect(gateway.ws_url)
    await client.send({"id": "x"})
    reply = await client.recv_type("error")
    message = reply["error"]["message"]
    assert message == "message has no type; expected one of subscribe, unsubscribe, ping, pong"
    assert reply["subscription"] == "x" and reply["error"]["code"] == 3

    await client.send({"type": "unsubscribe"})
    reply = await client.recv_type("error")
    assert reply["error"]["message"] == "unsubscribe needs the id of a subscription", reply

    # A value that is not a string is shown as the JSON it came as.
    await client.send({"type": True})
    message = (await client.recv_type("error"))["error"]["message"]
    assert message.startswith("unknown message type true:"), message
    await client.send({"type": "unsubscribe", "id": "nope"})
    assert (await client.recv_type("error"))["error"]["message"] == "no subscription 'nope'"
    for text in ("None", "null"):
        assert text not in message
    await client.close()


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
async def test_an_encoded_request_body_is_a_415(http: httpx.AsyncClient, encoding: str) -> None:
    body = gzip.compress(json.dumps({"event": {"type": "app.x", "subject": "a/b"}}).encode())
    reply = await http.post(
        "/v1/events",
        content=body,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert reply.status_code == 415, reply.text
    error = reply.json()
    assert error["code"] == 3, error
    assert "Content-Encoding" in error["message"] and "not supported" in error["message"], error
    assert repr(encoding) in error["message"], error

    # A document upload too (it would be stored compressed).
    reply = await http.post(
        "/v1/documents",
        content=b"\x1f\x8b compressed",
        headers={"Content-Type": "text/plain", "Content-Encoding": encoding},
    )
    assert reply.status_code == 415, reply.text

    # identity is the body as it is.
    reply = await http.post(
        "/v1/events",
        json={"event": {"type": "app.x", "subject": new_subject()}},
        headers={"Content-Encoding": "identity"},
    )
    assert reply.status_code == 200, reply.text


@pytest.fixture
async def frozen_nats_gateway(
    infra: Any, tmp_path: Path
) -> AsyncIterator[tuple[Any, EmbeddedNats]]:
    """A gateway in front of an events service on a nats-server of the test's own, which gives
    up opening a stream after 2 s (EVENTS_PUBLISH_TIMEOUT_SECONDS)."""
    from amelia_events.server import build_service

    nats = EmbeddedNats(tmp_path, free_port())
    nats.start()
    settings = infra.settings(NATS_URL=nats.url, EVENTS_PUBLISH_TIMEOUT_SECONDS=2)
    events = await build_service(settings)
    await events.start()
    address = f"127.0.0.1:{events.bound_port}"
    gateway = await start_gateway(
        infra.settings(NATS_URL=nats.url, EVENTS_ADDRESS=address, EVENTS_PUBLISH_TIMEOUT_SECONDS=2)
    )
    try:
        yield gateway, nats
    finally:
        pid = nats.pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        await gateway.stop()
        await events.stop(1.0)
        nats.stop()


async def test_a_stream_that_cannot_open_gets_its_http_status(
    frozen_nats_gateway: tuple[RunningGateway, EmbeddedNats],
) -> None:
    gateway, nats = frozen_nats_gateway
    subject = new_subject()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        # Open, it streams (200 and the events).
        published = await http.post(
            "/v1/events", json={"event": {"type": "app.x", "subject": subject}}
        )
        assert published.status_code == 200, published.text
        params = {"filter.subject": subject, "fromBeginning": "true"}
        async with http.stream("GET", "/v1/events:stream", params=params) as reply:
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                assert json.loads(line)["result"]["event"]["subject"] == subject
                break

        pid = nats.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # NATS stops answering; the events service's health
        try:  # still says it is connected
            async with http.stream("GET", "/v1/events:stream", params=params) as reply:
                body = (await reply.aread()).decode()
        finally:
            os.kill(pid, signal.SIGCONT)
    assert reply.status_code == 503, body
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    error = json.loads(body)  # the google.rpc.Status, as every other error
    assert error["code"] == 14, error
    assert "nats" in error["message"].lower(), error
