"""Clients that stop reading cost the gateway a bounded amount of memory each, and still get every
event, once, in order, when they read again.

A WebSocket catch-up (`"since": "beginning"`) or an NDJSON `GET /v1/events:stream` whose client
stops reading makes the gateway stop reading its upstream call (the socket's queue is full, the
response's write waits). Before session 26 two things still took the history in for it:

- gRPC's C core kept receiving for the call up to its HTTP/2 window, which BDP probing grows to
  tens of MiB on loopback: 13-18 MiB of each stalled WebSocket replay of 16 KB events, and
  4.3 MiB of each stalled NDJSON stream, sat in gRPC's buffers. The gateway's channels now
  probe no BDP and keep a 1 MiB window (`upstream.BOUNDED_WINDOW`).
- a replay read on while its socket's queue held up to half the socket's byte budget (8 MiB of
  WS_SEND_QUEUE_BYTES' 16); it now keeps `ws.PACED_BYTES` (1 MiB) queued ahead.

Measured with the gateway in a process of its own (docs/gateway.md, "Memory per client"): a
stalled WebSocket replay 17-27 MiB before, 3-6 MiB after; a stalled NDJSON stream 4.3 MiB
before, 0.5 MiB after. The bounds below are generous (about twice what is seen now, under what
was seen before); nothing here asserts a time: each step waits for a state.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import psutil
import pytest
import websockets
from gateway_helpers import (
    Client,
    GatewayProcess,
    Publisher,
    RunningGateway,
    gateway_process,
    new_subject,
    wait_for,
)
from test_gateway_ws_batches import publish_many

from amelia_gateway.hub import CHUNK_BYTES

MiB = 1024 * 1024
HISTORY = 1500  # events of ~16 KB: ~24 MB, far more than the kernel's socket buffers take
PAYLOAD = "x" * 16_000
EVENT_TEXT = len(PAYLOAD) + 1000  # an event's JSON text, at most
STALLED_WS = 3
STALLED_NDJSON = 4
# RSS growth allowed per stalled client (seen now: 3-7 MiB a socket, 0.5 MiB an NDJSON stream;
# before: 14-27 MiB and 3.6-4.3 MiB; this test's three sockets grew the old gateway 42-44 MiB, its
# four streams 14-16 MiB).
WS_BOUND = 12 * MiB
NDJSON_BOUND = 2 * MiB


@pytest.fixture
async def gateway_alone(events_address: str, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    # No heartbeat close while the clients do not read (it would free their memory).
    async with gateway_process(events_address, tmp_path, WS_HEARTBEAT_INTERVAL="600") as running:
        yield running


def _rss(running: GatewayProcess) -> int:
    return int(psutil.Process(running.process.pid).memory_info().rss)


async def _settled_rss(running: GatewayProcess, most: float = 90) -> int:
    """The gateway's RSS once it stopped growing (under 0.5 MiB over the last 4 s of samples),
    or after `most` seconds: an RSS still growing then is measured as it is (a bound that holds
    then holds), so this never fails on a slow machine."""
    loop = asyncio.get_running_loop()
    end = loop.time() + most
    samples: list[int] = []
    while loop.time() < end:
        samples.append(_rss(running))
        recent = samples[-17:]
        if len(recent) == 17 and max(recent) - min(recent) < MiB // 2:
            break
        await asyncio.sleep(0.25)
    return samples[-1]


async def _stuck_client(port: int) -> Any:
    """A websockets client that stops reading: it takes one message (max_queue=1) and never
    calls recv. (The kernel's receive buffer keeps its default: one asked small, as
    test_gateway_slow's, makes loopback TCP crawl once it reads, a window under one segment.)"""
    return await websockets.connect(f"ws://127.0.0.1:{port}/ws", max_queue=1, max_size=None)


def _sequences(line: str) -> list[int]:
    result = json.loads(line)["result"]
    if result["events"]:
        return [int(e["sequence"]) for e in result["events"]]
    return [int(result["event"]["sequence"])]


async def _read_ndjson(response: httpx.Response, count: int) -> list[int]:
    got: list[int] = []
    try:
        async with asyncio.timeout(180):
            async for line in response.aiter_lines():
                if line:
                    got += _sequences(line)
                if len(got) >= count:
                    break
    except TimeoutError:
        raise AssertionError(f"NDJSON: {len(got)} of {count} events came") from None
    return got


async def _read_ws(client: Any, count: int) -> list[int]:
    got: list[int] = []
    try:
        async with asyncio.timeout(180):
            while len(got) < count:
                message = json.loads(await client.recv())
                if message["type"] == "event":
                    got.append(int(message["sequence"]))
                else:
                    assert message["type"] in ("welcome", "subscribed", "ping", "status"), message
    except TimeoutError:
        raise AssertionError(f"WebSocket: {len(got)} of {count} events came") from None
    return got


async def test_stalled_clients_of_a_long_history_hold_a_bounded_part_of_it(
    gateway_alone: GatewayProcess, publisher: Publisher
) -> None:
    running = gateway_alone
    subject = new_subject()
    history = await publish_many(publisher, subject, HISTORY, p=PAYLOAD)
    subscribe = {"type": "subscribe", "id": "s", "filter": {"subject": subject}}
    stream_url = f"/v1/events:stream?filter.subject={subject}&fromBeginning=true"

    # Warm up: a fast client of each kind reads the whole history (what the process keeps
    # after the first big transfer is not a stalled client's).
    fast = await Client.connect(running.ws_url, max_size=None)
    await fast.subscribe("s", filter={"subject": subject}, since="beginning")
    assert [m["sequence"] for m in await fast.events(HISTORY, timeout=120)] == history
    await fast.close()
    async with (
        httpx.AsyncClient(base_url=running.url, timeout=120) as http,
        http.stream("GET", stream_url) as response,
    ):
        assert await _read_ndjson(response, HISTORY) == history

    async with httpx.AsyncClient(timeout=120) as http:
        # NDJSON: responses whose clients read the status line and then nothing.
        before = await _settled_rss(running)
        streams = [
            await http.send(http.build_request("GET", running.url + stream_url), stream=True)
            for _ in range(STALLED_NDJSON)
        ]
        assert [r.status_code for r in streams] == [200] * STALLED_NDJSON
        ndjson_growth = await _settled_rss(running) - before

        # WebSocket: catch-ups from the beginning whose clients never call recv.
        before = await _settled_rss(running)
        sockets = [await _stuck_client(running.port) for _ in range(STALLED_WS)]
        for stuck in sockets:
            await stuck.send(json.dumps({**subscribe, "since": "beginning"}))
        ws_growth = await _settled_rss(running) - before
        print(
            f"\n{STALLED_NDJSON} stalled NDJSON streams: RSS +{ndjson_growth / MiB:.1f} MiB; "
            f"{STALLED_WS} stalled WebSocket replays: +{ws_growth / MiB:.1f} MiB "
            f"(history {HISTORY * len(PAYLOAD) / MiB:.0f} MiB)"
        )
        assert ndjson_growth < STALLED_NDJSON * NDJSON_BOUND, ndjson_growth / MiB
        assert ws_growth < STALLED_WS * WS_BOUND, ws_growth / MiB
        # (The gateway's own count of what the sockets hold: their queues.)
        async with httpx.AsyncClient(base_url=running.url) as status_http:
            gateway = (await status_http.get("/v1/status")).json()["gateway"]
        assert gateway["queuedBytes"] <= STALLED_WS * (CHUNK_BYTES * 2 + EVENT_TEXT), gateway

        # Reading at last, each gets every event once, in order, from where it was.
        got = await asyncio.gather(
            *(_read_ndjson(r, HISTORY) for r in streams),
            *(_read_ws(s, HISTORY) for s in sockets),
        )
        assert got == [history] * (STALLED_NDJSON + STALLED_WS)
        for r in streams:
            await r.aclose()
        for stuck in sockets:
            await stuck.close()


async def test_a_stalled_replay_keeps_one_message_queued_ahead(
    gateway: RunningGateway, publisher: Publisher
) -> None:
    """The gateway's own count: a catch-up whose client stopped reading waits with at most
    `paced_bytes` and one message in its socket's queue (it was half the byte budget, 8 MiB)."""
    subject = new_subject()
    history = await publish_many(publisher, subject, 600, p=PAYLOAD)  # ~10 MB
    sockets = [await _stuck_client(gateway.port) for _ in range(2)]
    for stuck in sockets:
        await stuck.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": "s",
                    "filter": {"subject": subject},
                    "since": "beginning",
                }
            )
        )
    await wait_for(lambda: len(gateway.gateway.connections) == 2, timeout=60)
    connections = list(gateway.gateway.connections.values())
    # Stalled: its sender stuck on the client, its replay waiting for room (more than it keeps
    # ahead is queued).
    await wait_for(
        lambda: all(
            c.queued_bytes > cast(Any, c).paced_bytes and cast(Any, c).stalled()
            for c in connections
        ),
        timeout=90,
    )
    for connection in connections:
        paced = cast(Any, connection).paced_bytes
        assert paced <= CHUNK_BYTES
        assert connection.queued_bytes <= paced + CHUNK_BYTES + EVENT_TEXT
    assert gateway.gateway.stats()["wsQueuedBytesPeak"] <= 2 * CHUNK_BYTES + EVENT_TEXT
    got = await asyncio.gather(*(_read_ws(s, len(history)) for s in sockets))
    assert got == [history, history]
    for stuck in sockets:
        await stuck.close()
