"""What the gateway process writes to its log: never the API token, and a slow socket once.

The gateway runs as the mesh runs it (`python -m amelia_gateway`, configured by the environment)
with DEBUG logging, so uvicorn's and websockets' own handshake logging is in play.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from gateway_helpers import Client, GatewayProcess, Publisher, gateway_process, new_subject

TOKEN = f"tok-{uuid.uuid4().hex}"
SEND_QUEUE = 10


@pytest.fixture(scope="module")
async def logged_gateway(
    events_address: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    async with gateway_process(
        events_address,
        tmp_path_factory.mktemp("gateway-log"),
        LOG_LEVEL="DEBUG",
        AMELIA_API_TOKEN=TOKEN,
        WS_SEND_QUEUE=str(SEND_QUEUE),
    ) as running:
        yield running


async def _refused(url: str, **kwargs: Any) -> int:
    ws = await websockets.connect(url, open_timeout=20, **kwargs)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), timeout=20)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_the_token_never_reaches_the_log(logged_gateway: GatewayProcess) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=logged_gateway.url, timeout=30) as http:
        assert (await http.get("/v1/events", headers=bearer)).status_code == 200
        assert (await http.get("/v1/events", headers={"X-API-Key": TOKEN})).status_code == 200
        assert (await http.get("/v1/status", headers=bearer)).status_code == 200
        # The dashboard link carries the token in the query string.
        assert (await http.get("/", params={"token": TOKEN})).status_code == 200
        reply = await http.get("/v1/events", params={"token": TOKEN}, headers=bearer)
        assert reply.status_code == 400 and TOKEN not in reply.text
        assert (await http.get("/v1/agents", headers=bearer)).status_code == 503
        wrong = await http.get("/v1/events", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401

    url = logged_gateway.ws_url
    for kwargs in (
        {"additional_headers": bearer},
        {"additional_headers": {"X-API-Key": TOKEN}},
        {"subprotocols": ["amelia.v1", f"bearer.{TOKEN}"]},
        {"subprotocols": [f"bearer.{TOKEN}"]},  # echoed back in the handshake answer
    ):
        client = await Client.connect(url, **kwargs)
        await client.close()
    client = await Client.connect(f"{url}?token={TOKEN}", additional_headers=bearer)
    await client.close()
    assert await _refused(f"{url}?token={TOKEN}") == 4401  # the query is not a credential

    log = logged_gateway.log()
    assert '"level": "debug"' in log  # DEBUG was on: the handshakes were logged...
    assert "sec-websocket-protocol" in log.lower()
    assert "[REDACTED]" in log  # ...with the credentials taken out
    leaks = [line for line in log.splitlines() if TOKEN in line]
    assert not leaks, leaks[:5]


async def test_a_slow_socket_is_closed_and_logged_once(
    logged_gateway: GatewayProcess, publisher: Publisher
) -> None:
    """One event for 30 subscriptions of one socket overflows its queue of 10 in one go."""
    subject = new_subject()
    client = await Client.connect(
        logged_gateway.ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}
    )
    for i in range(3 * SEND_QUEUE):
        await client.subscribe(i, filter={"subject": subject})
    before = logged_gateway.log().count("closing slow websocket")
    await publisher.publish(subject)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await client.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
    async with httpx.AsyncClient(base_url=logged_gateway.url, timeout=30) as http:
        reply = await http.get("/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.json()["gateway"]["wsClosedSlow"] == 1
    lines = [
        json.loads(line)
        for line in logged_gateway.log().splitlines()
        if "closing slow websocket" in line
    ]
    assert len(lines) - before == 1, lines
