"""NDJSON streams are bounded in the gateway (GATEWAY_MAX_HTTP_STREAMS), and a stream's slot and
upstream call are given back however its client leaves.

Each `/v1/events:stream` is a StreamEvents call of its own, so one client looping `curl -N` could
open them until the events service's EVENTS_MAX_STREAMS was all theirs. Past the gateway's limit
one more is refused with 429 (RESOURCE_EXHAUSTED) naming the setting. A client that goes away at
any moment, also right after sending its request (while the gateway opens the upstream call),
frees its slot and its upstream call: a leak there would first hold readers of the log, then,
with the limit, refuse every stream for good.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
from gateway_helpers import Publisher, RunningGateway, new_subject, start_gateway, wait_for

from amelia_common.settings import Settings
from amelia_events.server import EventsService

LIMIT = 3


@pytest.fixture
async def small(gateway_settings: Settings) -> AsyncIterator[RunningGateway]:
    values = {**gateway_settings.model_dump(), "GATEWAY_MAX_HTTP_STREAMS": LIMIT}
    running = await start_gateway(Settings(_env_file=None, **values))  # type: ignore[call-arg]
    yield running
    await running.stop()


async def _open(stack: AsyncExitStack, http: httpx.AsyncClient, subject: str) -> None:
    """A stream of `subject` from its beginning, its first line read (so it is open), kept open
    until `stack` closes (with its line iterator: httpx closes a response whose iterator is
    collected)."""
    params = {"filter.subject": subject, "fromBeginning": "true"}
    reply = await stack.enter_async_context(http.stream("GET", "/v1/events:stream", params=params))
    assert reply.status_code == 200, await reply.aread()
    lines = reply.aiter_lines()
    assert "event" in json.loads(await anext(lines))["result"]
    stack.push_async_callback(lines.aclose)  # type: ignore[attr-defined]


def _readers(events_service: EventsService, subject: str) -> int:
    """The events service's readers following `subject` now."""
    assert events_service.servicer is not None
    token = subject.replace("/", ".")
    return sum(any(token in f for f in r.filters) for r in events_service.servicer.readers)


async def test_one_stream_past_the_limit_is_refused_until_one_ends(
    small: RunningGateway, publisher: Publisher
) -> None:
    subject = new_subject()
    await publisher.publish(subject)
    async with httpx.AsyncClient(base_url=small.url, timeout=30) as http:
        async with AsyncExitStack() as first:
            async with AsyncExitStack() as rest:
                await _open(first, http, subject)
                for _ in range(LIMIT - 1):
                    await _open(rest, http, subject)
                refused = await http.get(
                    "/v1/events:stream", params={"filter.subject": subject, "fromBeginning": "1"}
                )
                assert refused.status_code == 429, refused.text
                body = refused.json()
                assert body["code"] == 8  # RESOURCE_EXHAUSTED
                assert "GATEWAY_MAX_HTTP_STREAMS" in body["message"]
                assert f"{LIMIT} NDJSON streams" in body["message"]
                status = (await http.get("/v1/status")).json()["gateway"]
                assert status["httpStreams"] == LIMIT
                assert status["maxHttpStreams"] == LIMIT
                assert status["httpRefusedStreams"] == 1
            # Two streams ended: their slots are free again (the gateway lets go of their
            # calls once it sees their clients gone).
            await wait_for(lambda: len(small.gateway.http_streams) == 1)
            for _ in range(LIMIT - 1):
                await _open(first, http, subject)
        await wait_for(lambda: not small.gateway.http_streams)


def _request_then_leave(port: int, path: str) -> None:
    """Send a GET and close the connection at once, without reading anything: the gateway gets
    the request and then the end of the connection while it opens the upstream call."""
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())


async def test_clients_that_leave_at_once_give_their_slots_and_calls_back(
    small: RunningGateway, publisher: Publisher, events_service: EventsService
) -> None:
    subject = new_subject()
    await publisher.publish(subject)
    path = f"/v1/events:stream?filter.subject={subject}&fromBeginning=true"
    for _ in range(10 * LIMIT):
        await asyncio.to_thread(_request_then_leave, small.port, path)
    # Some were refused (429) while earlier ones still held their slots; none is left open.
    await wait_for(lambda: not small.gateway.http_streams, timeout=60)
    await wait_for(lambda: small.gateway.http_streams_opening == 0, timeout=60)
    await wait_for(lambda: _readers(events_service, subject) == 0, timeout=60)
    # And the gateway serves its full count of streams again.
    async with httpx.AsyncClient(base_url=small.url, timeout=30) as http, AsyncExitStack() as s:
        for _ in range(LIMIT):
            await _open(s, http, subject)
