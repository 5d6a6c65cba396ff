"""A client that never reads: closed with 4008, others get everything, gateway memory bounded.

The gateway runs as its own process (`python -m amelia_gateway`) so its memory is measured
alone. The stuck client is a real websockets client that stops reading (its receive buffer is
tiny and it never calls recv), while a second client reads everything; ~24 MB of events go
through, far more than the stuck client's bounded queue.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil
import pytest
import websockets
from gateway_helpers import (
    Client,
    GatewayProcess,
    Publisher,
    gateway_process,
    new_subject,
    start_gateway,
    wait_for,
)
from test_gateway_ws_batches import publish_many

from amelia_common.settings import Settings

EVENTS = 3000
PAYLOAD = "x" * 8000
SEND_QUEUE = 50


@pytest.fixture
async def slow_gateway(events_address: str, tmp_path: Any) -> AsyncIterator[GatewayProcess]:
    async with gateway_process(events_address, tmp_path, WS_SEND_QUEUE=str(SEND_QUEUE)) as running:
        yield running


async def _stuck_client(port: int) -> Any:
    """A websockets client that stops reading: tiny receive buffer, max_queue=1, no recv()."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await websockets.connect(f"ws://127.0.0.1:{port}/ws", sock=sock, max_queue=1)


async def test_never_reading_client_is_closed_and_memory_stays_bounded(
    slow_gateway: GatewayProcess, publisher: Publisher
) -> None:
    port = slow_gateway.port
    rss = psutil.Process(slow_gateway.process.pid)
    subject = new_subject()
    stuck = await _stuck_client(port)
    await stuck.send(json.dumps({"type": "subscribe", "id": "s", "filter": {"subject": subject}}))
    reader = await Client.connect(f"ws://127.0.0.1:{port}/ws")
    await reader.subscribe("s", filter={"subject": subject})

    # Warm up (first events allocate what the process keeps anyway), then measure.
    warm = [await publisher.publish(subject, data={"p": PAYLOAD}) for _ in range(20)]
    assert [m["sequence"] for m in await reader.events(20)] == warm
    before = rss.memory_info().rss

    published: list[int] = list(warm)
    received: list[int] = [s for s in warm]
    latencies: list[float] = []
    peak = before

    async def read_all() -> None:
        while len(received) < len(warm) + EVENTS:
            message = await reader.recv(timeout=60)
            if message["type"] == "event":
                received.append(message["sequence"])
                latencies.append(time.time() - message["event"]["data"]["t"])

    async def publish_all() -> None:
        nonlocal peak
        for start in range(0, EVENTS, 25):
            batch = await asyncio.gather(
                *(
                    publisher.publish(subject, data={"p": PAYLOAD, "t": time.time()})
                    for _ in range(25)
                )
            )
            published.extend(batch)
            peak = max(peak, rss.memory_info().rss)
            del start

    got: list[int] = []
    closes: list[websockets.ConnectionClosed] = []

    async def read_stuck_once_given_up() -> None:
        """Read again as soon as the gateway gave up on the stuck client: the close frame waits
        behind the data in flight for 10 s (CLOSE_GRACE), then the connection is dropped."""
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(2400):
                if (await http.get("/v1/status")).json()["gateway"]["wsClosedSlow"]:
                    break
                await asyncio.sleep(0.05)
        try:
            while True:
                message = json.loads(await asyncio.wait_for(stuck.recv(), timeout=30))
                if message["type"] == "event":
                    got.append(message["sequence"])
        except websockets.ConnectionClosed as exc:
            closes.append(exc)

    await asyncio.gather(read_all(), publish_all(), read_stuck_once_given_up())
    after = rss.memory_info().rss
    peak = max(peak, after)

    # The reading client got every event in order, while the other one was stuck.
    assert received == sorted(published)
    latencies.sort()
    print(
        f"\nreader latency p50={latencies[len(latencies) // 2] * 1000:.1f}ms "
        f"p99={latencies[int(len(latencies) * 0.99)] * 1000:.1f}ms; gateway RSS before="
        f"{before / 2**20:.1f}MiB peak={peak / 2**20:.1f}MiB after={after / 2**20:.1f}MiB "
        f"for {EVENTS * len(PAYLOAD) / 2**20:.0f}MiB of events"
    )
    # ~23 MiB went to the stuck client's socket; the gateway held at most its small queue.
    assert peak - before < 12 * 2**20, (before, peak)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        stats = (await http.get("/v1/status")).json()["gateway"]
    assert stats["wsClosedSlow"] == 1
    assert slow_gateway.log().count("closing slow websocket") == 1
    assert stats["connections"] == 1

    # When the stuck client reads again it gets what was in flight, then the documented close.
    (closed,) = closes
    assert closed.rcvd is not None
    assert closed.rcvd.code == 4008
    reason = closed.rcvd.reason
    assert reason.startswith("slow consumer")
    resume_from = int(reason.rsplit(" ", 1)[1])
    assert got == sorted(published)[: len(got)]  # a prefix, in order
    assert resume_from == got[-1]

    # Resuming from the sequence in the reason gives the rest: no gap, no duplicate.
    again = await Client.connect(f"ws://127.0.0.1:{port}/ws")
    await again.subscribe("s", filter={"subject": subject}, since=resume_from)
    rest = [m["sequence"] for m in await again.events(len(published) - len(got), timeout=60)]
    assert got + rest == sorted(published)
    await again.close()
    await reader.close()
    await wait_for(lambda: True)


async def test_a_replay_waits_for_a_client_that_pauses_instead_of_dropping_it(
    gateway_settings: Settings, publisher: Publisher
) -> None:
    """A replay reads a stream of its own, so it goes at its client's pace: a client that stops
    reading for a while (tiny receive buffer, send queue of 8) is not closed as a slow consumer,
    and then gets all 600 past events (~4.7 MiB) in order."""
    running = await start_gateway(gateway_settings.model_copy(update={"WS_SEND_QUEUE": 8}))
    try:
        subject = new_subject()
        sequences = await publish_many(publisher, subject, 600, p=PAYLOAD)
        paused = await _stuck_client(running.port)
        await paused.send(
            json.dumps({"type": "subscribe", "id": "s", "filter": {"subject": subject}, "since": 0})
        )
        await asyncio.sleep(2)  # the gateway's buffers fill; the replay must wait, not drop
        got: list[int] = []
        async with asyncio.timeout(60):
            while len(got) < len(sequences):
                message = json.loads(await paused.recv())
                if message["type"] == "event":
                    got.append(message["sequence"])
        assert got == sequences
        assert running.gateway.counters["wsClosedSlow"] == 0
        await paused.close()
    finally:
        await running.stop()
