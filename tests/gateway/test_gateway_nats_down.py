"""NATS down behind the events service: a client of the gateway hears why, never silence.

The events service waits for NATS before it opens a stream (its consumer cannot exist) and sends
nothing meanwhile; the gateway asks the service's health which dependency is down and says so:
on a socket an `error` naming it with `final: false` (the gateway keeps waiting, the events
follow once NATS is back), on an NDJSON stream a 503 or a last error line naming it. A private
nats-server and events service, so stopping it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_helpers import Client, Publisher, RunningGateway, new_subject, start_gateway

from amelia_common.embedded import EmbeddedNats, free_port


@dataclass
class Isolated:
    gateway: RunningGateway
    events_address: str
    nats: EmbeddedNats


@pytest.fixture
async def isolated(infra: Any, tmp_path: Path) -> AsyncIterator[Isolated]:
    """A gateway in front of an events service on a nats-server of the test's own."""
    from amelia_events.server import build_service

    nats = EmbeddedNats(tmp_path, free_port())
    nats.start()
    settings = infra.settings(NATS_URL=nats.url)
    events = await build_service(settings)
    await events.start()
    address = f"127.0.0.1:{events.bound_port}"
    gateway = await start_gateway(infra.settings(NATS_URL=nats.url, EVENTS_ADDRESS=address))
    try:
        yield Isolated(gateway, address, nats)
    finally:
        await gateway.stop()
        await events.stop(1.0)
        nats.stop()


async def _nats_reported(http: httpx.AsyncClient, status: str) -> None:
    for _ in range(300):
        if (await http.get("/v1/status")).json()["services"]["events"]["dependencies"][
            "nats"
        ] == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the events service never reported NATS {status}")


async def test_with_nats_down_streams_say_so_and_events_follow_once_it_is_back(
    isolated: Isolated, infra: Any
) -> None:
    gateway, events_address, private_nats = isolated.gateway, isolated.events_address, isolated.nats
    subject = new_subject()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        for _ in range(3):  # down and back, three times: the same answers each time
            await asyncio.to_thread(private_nats.stop)
            await _nats_reported(http, "NOT_SERVING")

            client = await Client.connect(gateway.ws_url)
            await client.subscribe("s", filter={"subject": subject}, since="beginning")
            error = await client.recv_type("error", timeout=30)
            assert error["subscription"] == "s" and error["final"] is False, error
            assert error["error"]["code"] == 14 and "nats" in error["error"]["message"], error

            async with http.stream(
                "GET", "/v1/events:stream", params={"filter.subject": subject}
            ) as reply:
                body = (await reply.aread()).decode()
            # (Had NATS gone down after the 200, the last line would say the same.)
            assert reply.status_code == 503, body
            assert '"code":14' in body and "dependency nats is down" in body, body

            await asyncio.to_thread(private_nats.start)
            await _nats_reported(http, "SERVING")
            publisher = Publisher.connect(events_address, infra.settings())
            sequence = await publisher.publish(subject)
            await publisher.close()
            # The stream is open again: the client is told so (its error can be cleared), then
            # the events follow.
            assert (await client.recv_type("status", timeout=60))["status"] == "back"
            received: list[int] = []
            while sequence not in received:  # every event so far, then the new one, once each
                received += [m["sequence"] for m in await client.events(1, timeout=60)]
            assert received == sorted(set(received)), received
            await client.close()


REQUEST_INFO = "type.googleapis.com/google.rpc.RequestInfo"


async def test_the_services_error_details_are_in_the_body_with_one_request_info(
    isolated: Isolated,
) -> None:
    """A service's google.rpc.Status details in the body: the gateway's RequestInfo (the id its
    client sees, once), then the service's others as proto JSON with their "@type" — for NATS
    down, ErrorInfo naming it and RetryInfo."""
    async with httpx.AsyncClient(base_url=isolated.gateway.url, timeout=60) as http:
        rid = f"f5-{uuid.uuid4().hex}"
        reply = await http.get("/v1/events/not-a-number", headers={"X-Request-Id": rid})
        assert reply.status_code == 400, reply.text
        body = reply.json()
        assert body["code"] == 3 and body["message"].startswith("name 'events/not-a-number'")
        # The service has nothing more to say than its request id, which is the gateway's.
        assert body["details"] == [{"@type": REQUEST_INFO, "requestId": rid}]

        await asyncio.to_thread(isolated.nats.stop)
        try:
            rid = f"f5-{uuid.uuid4().hex}"
            reply = await http.get("/v1/events/1", headers={"X-Request-Id": rid})
        finally:
            await asyncio.to_thread(isolated.nats.start)
        assert reply.status_code == 503, reply.text
        body = reply.json()
        assert body["code"] == 14
        assert body["message"].startswith("events: NATS at nats://"), body  # as before
        assert reply.headers["X-Request-Id"] == rid
        assert body["details"] == [
            {"@type": REQUEST_INFO, "requestId": rid},
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "DEPENDENCY_UNAVAILABLE",
                "domain": "amelia",
                "metadata": {"dependency": "NATS"},
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"},
        ]
