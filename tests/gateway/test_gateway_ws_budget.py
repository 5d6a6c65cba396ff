"""A socket's memory is bounded in bytes (WS_SEND_QUEUE_BYTES), not only in messages.

QA F2: a socket that stopped reading held 1,000 events of 450 KB (575 MB) before the count
limit (WS_SEND_QUEUE) closed it, four such sockets 1.9 GB. F3: a catch-up subscription whose
client stopped reading buffered every live event meanwhile (10,000 of them) and was never closed.
Now both are closed as slow consumers (4008) once over the byte budget, with the sequence to
resume from, and resuming from it gives every event, none twice.

The stuck client is a real websockets client that stops reading (tiny receive buffer, no recv()).
Events are published until the gateway closes it, however much the kernel's socket buffers took
first; what the gateway held is its own high-water mark (`wsQueuedBytesPeak` in /v1/status).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import websockets
from gateway_helpers import Client, Publisher, RunningGateway, new_subject, start_gateway, wait_for
from test_gateway_slow import _stuck_client
from test_gateway_ws_batches import publish_many

from amelia_common.settings import Settings

BUDGET = 4 * 1024 * 1024  # the smallest WS_SEND_QUEUE_BYTES
PAYLOAD = "x" * 100_000  # an event of ~100 KB: forty fill the budget
# Most events published before the gateway must have closed the stuck socket: the kernel's
# buffers take a few MB first; without the byte budget (the old gateway) none is closed.
MOST = 400
# What one socket may hold at most: its budget, or half of it and one upstream message.
BOUND = BUDGET + len(PAYLOAD) + 1000


async def _budget_gateway(settings: Settings) -> RunningGateway:
    return await start_gateway(settings.model_copy(update={"WS_SEND_QUEUE_BYTES": BUDGET}))


async def _read_until_closed(stuck: Any) -> tuple[list[int], int, str]:
    """What the stuck client gets once it reads again: the events in flight, then the close."""
    got: list[int] = []
    try:
        async with asyncio.timeout(60):
            while True:
                message = json.loads(await stuck.recv())
                if message["type"] == "event":
                    got.append(message["sequence"])
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None, exc
        return got, exc.rcvd.code, exc.rcvd.reason
    raise AssertionError("unreachable")


async def _stalled(running: RunningGateway) -> None:
    """Until the socket's queue holds more than its replay keeps ahead (`paced_bytes`: the
    replay waits for room) and its sender has been stuck on the client for ws.STALL_SECONDS."""
    (connection,) = running.gateway.connections.values()
    await wait_for(
        lambda: (
            connection.queued_bytes > cast(Any, connection).paced_bytes
            and cast(Any, connection).stalled()
        ),
        timeout=60,
    )


async def _resume(running: RunningGateway, subject: str, since: int, count: int) -> list[int]:
    again = await Client.connect(running.ws_url)
    await again.subscribe("s", filter={"subject": subject}, since=since)
    rest = [m["sequence"] for m in await again.events(count, timeout=60)]
    await again.close()
    return rest


async def test_a_socket_that_stops_reading_is_closed_once_over_its_byte_budget(
    gateway_settings: Settings, publisher: Publisher
) -> None:
    running = await _budget_gateway(gateway_settings)
    counters = running.gateway.counters
    try:
        subject = new_subject()
        stuck = await _stuck_client(running.port)
        await stuck.send(
            json.dumps({"type": "subscribe", "id": "s", "filter": {"subject": subject}})
        )
        await wait_for(lambda: running.gateway.stats()["subscriptions"] == 1)

        published: list[int] = []
        while not counters["wsClosedSlow"] and len(published) < MOST:
            published.append(await publisher.publish(subject, data={"p": PAYLOAD}))
        assert counters["wsClosedSlow"] == 1, "never closed: the budget is not in bytes"
        # Well under WS_SEND_QUEUE (1000 messages), the gateway held at most its byte budget.
        assert 0 < running.gateway.stats()["wsQueuedBytesPeak"] <= BOUND, running.gateway.stats()

        got, code, reason = await _read_until_closed(stuck)
        assert code == 4008, (code, reason)
        assert reason.startswith(f"slow consumer: over its budget of {BUDGET} bytes"), reason
        resume = int(reason.rsplit(" ", 1)[1])
        assert got == published[: len(got)]  # a prefix, in order
        assert resume == (got[-1] if got else 0)
        await wait_for(lambda: running.gateway.stats()["queuedBytes"] == 0)

        # Resuming from the sequence in the reason: every other event, none twice.
        more = await publish_many(publisher, subject, 3, p="after")
        rest = await _resume(running, subject, resume, len(published) - len(got) + len(more))
        assert got + rest == published + more
    finally:
        await running.stop()


async def test_a_catch_up_stalled_on_its_client_is_closed_once_its_live_buffer_is_over_budget(
    gateway_settings: Settings, publisher: Publisher
) -> None:
    """The replay waits for the client (its queue half full), the live events it buffers
    meanwhile count in the socket's budget: over it, the socket is closed, to resume from the
    last event the subscription delivered."""
    running = await _budget_gateway(gateway_settings)
    counters = running.gateway.counters
    try:
        subject = new_subject()
        history = await publish_many(publisher, subject, 150, p=PAYLOAD)  # ~15 MB
        stuck = await _stuck_client(running.port)
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
        # The replay filled the kernel's buffers and its queue: it waits for the client.
        await _stalled(running)

        live: list[int] = []
        while not counters["wsClosedSlow"] and len(live) < MOST:
            live.append(await publisher.publish(subject, data={"p": PAYLOAD}))
        assert counters["wsClosedSlow"] == 1, "never closed: the catch-up buffer is not bounded"
        assert 0 < running.gateway.stats()["wsQueuedBytesPeak"] <= BOUND, running.gateway.stats()
        assert running.gateway.hub.handovers == 0  # it was still catching up

        got, code, reason = await _read_until_closed(stuck)
        assert code == 4008, (code, reason)
        assert reason.startswith(f"slow consumer: over its budget of {BUDGET} bytes"), reason
        resume = int(reason.rsplit(" ", 1)[1])
        assert got and got == history[: len(got)]  # part of the replay, in order
        assert resume == got[-1]
        await wait_for(lambda: running.gateway.stats()["queuedBytes"] == 0)

        everything = history + live
        rest = await _resume(running, subject, resume, len(everything) - len(got))
        assert got + rest == everything
    finally:
        await running.stop()


async def test_a_reading_client_catching_up_beside_big_live_events_is_not_closed(
    gateway_settings: Settings, publisher: Publisher
) -> None:
    """The live events a replay buffers count in the budget too, but a replay that makes
    progress (its client reads) is never closed for them: past the budget it drops its buffer
    and finishes on its own stream; the client gets every event, in order, once."""
    running = await _budget_gateway(gateway_settings)
    try:
        subject = new_subject()
        history = await publish_many(publisher, subject, 150, p=PAYLOAD)  # ~15 MB
        client = await Client.connect(running.ws_url, max_size=None)
        await client.subscribe("s", filter={"subject": subject}, since="beginning")
        live = await publish_many(publisher, subject, 60, p=PAYLOAD)  # 6 MB at once: over budget
        got = [m["sequence"] for m in await client.events(len(history) + len(live), timeout=60)]
        assert got == history + live
        assert running.gateway.counters["wsClosedSlow"] == 0
        await client.close()
    finally:
        await running.stop()
