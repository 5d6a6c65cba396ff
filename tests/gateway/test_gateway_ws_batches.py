"""`"batch": true` subscriptions on /ws: events already queued for the socket arrive together in
one `events` message, each once and in order, beside a plain subscription on the same filter
(which still gets one `event` message per event) and through a resume; a replay comes in few
messages, at the client's pace; live events held for WS_BATCH_WINDOW_MS go out together."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway_helpers import Client, Publisher, RunningGateway, new_subject

from amelia.v1 import events_pb2
from amelia_gateway.errors import GatewayError
from amelia_gateway.hub import Chunk, _Coalesced


async def batched_events(client: Client, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """At least the next `count` events of a batching subscription, unpacked (whole messages)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            message = await client.recv(timeout)
            if message["type"] == "ping":
                continue
            assert message["type"] == "events", message
            assert message["events"], "an events message is never empty"
            out += [{**item, "subscription": message["subscription"]} for item in message["events"]]
    return out


async def test_batched_and_plain_subscriptions_see_every_event_once_in_order(
    gateway: RunningGateway, publisher: Publisher
) -> None:
    subject = new_subject()
    batched = await Client.connect(gateway.ws_url)
    await batched.subscribe("b", filter={"subject": subject}, batch=True)
    plain = await Client.connect(gateway.ws_url)
    await plain.subscribe("p", filter={"subject": subject})

    sequences: list[int] = []
    for start in range(0, 300, 100):
        request = events_pb2.PublishEventsRequest()
        for i in range(start, start + 100):
            event = request.events.add(type="app.token", subject=subject, source="tests")
            event.data.update({"i": i})
        reply = await publisher.stub.PublishEvents(request)
        sequences += [int(e.sequence) for e in reply.events]

    got = await batched_events(batched, 150)
    await batched.close()  # drops midway; resumes after the last event it saw
    resumed = await Client.connect(gateway.ws_url)
    await resumed.subscribe("b", filter={"subject": subject}, since=got[-1]["sequence"], batch=True)
    got += await batched_events(resumed, 300 - len(got))
    one_by_one = await plain.events(300)
    await resumed.close()
    await plain.close()

    assert [m["sequence"] for m in got] == sequences, "every event once, in order"
    assert [m["event"]["data"]["i"] for m in got] == list(range(300))
    assert all(m["subscription"] == "b" for m in got)
    assert [m["sequence"] for m in one_by_one] == sequences


async def test_batch_must_be_a_boolean(gateway: RunningGateway) -> None:
    client = await Client.connect(gateway.ws_url)
    await client.send(
        {"type": "subscribe", "id": "x", "filter": {"subject": new_subject()}, "batch": "yes"}
    )
    reply = await client.recv_type("error")
    assert reply["error"]["code"] == 3  # INVALID_ARGUMENT
    assert "'batch' must be true or false" in reply["error"]["message"]
    await client.subscribe("y", filter={"subject": new_subject()}, batch=False)
    await client.close()


async def publish_many(publisher: Publisher, subject: str, count: int, **data: Any) -> list[int]:
    """`count` events on `subject` (data `i` and `data`), 100 per PublishEvents; their sequences."""
    sequences: list[int] = []
    for start in range(0, count, 100):
        request = events_pb2.PublishEventsRequest()
        for i in range(start, min(start + 100, count)):
            event = request.events.add(type="app.token", subject=subject, source="tests")
            event.data.update({"i": i, **data})
        reply = await publisher.stub.PublishEvents(request)
        sequences += [int(e.sequence) for e in reply.events]
    return sequences


async def test_a_batched_replay_comes_in_a_few_messages(
    gateway: RunningGateway, publisher: Publisher
) -> None:
    """The hub reads history many events per upstream message and a batching socket sends each
    such chunk as one message: 300 stored events are not 300 socket messages."""
    subject = new_subject()
    sequences = await publish_many(publisher, subject, 300)
    client = await Client.connect(gateway.ws_url)
    await client.subscribe("b", filter={"subject": subject}, since="beginning", batch=True)
    messages = 0
    got: list[int] = []
    while len(got) < 300:
        message = await client.recv()
        if message["type"] == "events":
            messages += 1
            got += [item["sequence"] for item in message["events"]]
    await client.close()
    assert got == sequences
    assert messages < 30, f"300 replayed events came in {messages} messages"


class Received:
    """A sink that keeps what it is handed (the hub's side of a batching socket subscription)."""

    def __init__(self) -> None:
        self.chunks: list[list[int]] = []
        self.pushed = asyncio.Event()

    def push(self, chunk: Chunk) -> None:
        self.chunks.append(list(chunk.sequences))
        self.pushed.set()

    async def room(self) -> None:
        pass

    def fail(self, error: GatewayError, final: bool) -> None:
        pass

    def end(self) -> None:
        pass


def _chunk(*sequences: int) -> Chunk:
    return Chunk(list(sequences), [f'{{"sequence":"{s}"}}' for s in sequences])


async def test_a_batching_sink_gets_a_window_of_chunks_as_one_and_never_more_than_fit() -> None:
    """The chunks of one window go out as one (one socket message), in order, the first one no
    later than the window after it came; a window never gathers more than a chunk may hold."""
    sink = Received()
    coalesced = _Coalesced({id(sink): sink}, window=0.05, most=4)
    coalesced.add(_chunk(1))
    coalesced.add(_chunk(2, 3))
    assert sink.chunks == [], "held for the window"
    async with asyncio.timeout(30):
        await sink.pushed.wait()
    assert sink.chunks == [[1, 2, 3]]

    coalesced.add(_chunk(4, 5, 6))
    coalesced.add(_chunk(7, 8))  # 5 would not fit in 4: the window's 3 go first
    coalesced.add(_chunk(9, 10))  # 4: full, out at once
    assert sink.chunks[1:] == [[4, 5, 6], [7, 8, 9, 10]]
    coalesced.add(_chunk(11))
    coalesced.flush()  # an upstream error: what was held goes before it
    assert sink.chunks[3:] == [[11]]
    await asyncio.sleep(0.1)
    assert len(sink.chunks) == 4, "a flushed window's timer does not fire again"


async def test_without_a_window_every_chunk_goes_at_once() -> None:
    sink = Received()
    coalesced = _Coalesced({id(sink): sink}, window=0, most=4)
    coalesced.add(_chunk(1))
    coalesced.add(_chunk(2))
    assert sink.chunks == [[1], [2]]
