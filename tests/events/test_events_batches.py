"""Batches on the event path: PublishEvents, several events per StreamEvents message, and the
client library's pipelined publishing (acknowledgements awaited together, order kept).

The guarantees are the single-event ones: a batch with one bad event stores nothing; every
event acknowledged is stored once, in the order it was written, through a NATS restart; a
stream that asks for several events per message sees each event once, in order, and a client
that does not ask sees the original one-event messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from events_helpers import RunningEvents, event, list_all, own_event_log, publish, wait_until

from amelia.v1 import events_pb2
from amelia_common.embedded import EmbeddedNats
from amelia_common.eventlog import EventLog, EventLogUnavailableError, StartAt
from amelia_common.settings import Settings


@pytest.fixture
async def private_log(settings: Settings, private_nats: EmbeddedNats) -> AsyncIterator[EventLog]:
    isolated = settings.model_copy(
        update={"NATS_URL": private_nats.url, "EVENTS_PUBLISH_TIMEOUT_SECONDS": 1.0}
    )
    async with own_event_log(isolated, "pipeline") as log:
        yield log


def numbered(subject: str, count: int, prefix: str = "b") -> list[events_pb2.Event]:
    out = []
    for n in range(count):
        ev = event("test.tick", subject, n=n)
        ev.id = f"{prefix}-{subject.split('/')[1][:8]}-{n}"
        out.append(ev)
    return out


async def test_publish_events_stores_a_batch_in_order_and_a_resent_batch_once(
    events: RunningEvents, resource: str
) -> None:
    batch = numbered(resource, 50)
    reply = await events.stub.PublishEvents(events_pb2.PublishEventsRequest(events=batch))
    sequences = [e.sequence for e in reply.events]
    assert [e.id for e in reply.events] == [e.id for e in batch]
    assert sequences == sorted(sequences) and len(set(sequences)) == 50

    again = await events.stub.PublishEvents(events_pb2.PublishEventsRequest(events=batch))
    assert [e.sequence for e in again.events] == sequences, "a resent batch is stored once"
    stored = await list_all(events.stub, events_pb2.EventFilter(subject=resource))
    assert [e.sequence for e in stored] == sequences
    assert [e.data.fields["n"].number_value for e in stored] == list(range(50))


@pytest.mark.parametrize(
    ("bad", "code", "words"),
    [
        (events_pb2.Event(type="Not A Type", subject="tests/x"), "INVALID_ARGUMENT", "type"),
        (events_pb2.Event(type="run.completed", subject="tests/x"), "PERMISSION_DENIED", "run."),
    ],
)
async def test_one_bad_event_refuses_the_whole_batch_and_stores_nothing(
    events: RunningEvents, resource: str, bad: events_pb2.Event, code: str, words: str
) -> None:
    batch = numbered(resource, 5)
    bad.subject = resource
    batch.insert(3, bad)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events.stub.PublishEvents(events_pb2.PublishEventsRequest(events=batch))
    assert caught.value.code().name == code
    assert words in (caught.value.details() or "")
    assert await list_all(events.stub, events_pb2.EventFilter(subject=resource)) == []


async def test_a_batch_larger_than_the_limit_is_refused(
    events: RunningEvents, resource: str
) -> None:
    batch = numbered(resource, 1001)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events.stub.PublishEvents(events_pb2.PublishEventsRequest(events=batch))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000" in (caught.value.details() or "")
    assert await list_all(events.stub, events_pb2.EventFilter(subject=resource)) == []


async def test_several_events_per_message_history_then_live_each_once_in_order(
    events: RunningEvents, resource: str
) -> None:
    await events.stub.PublishEvents(
        events_pb2.PublishEventsRequest(events=numbered(resource, 300, "h"))
    )
    flt = events_pb2.EventFilter(subject=resource)
    batched = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=flt, from_beginning=True, max_events_per_message=64)
    )
    single = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=flt, from_beginning=True)
    )
    got: list[events_pb2.Event] = []
    sizes: list[int] = []
    async with asyncio.timeout(60):
        async for message in batched:
            assert not message.HasField("event"), "batched messages carry `events` only"
            sizes.append(len(message.events))
            got.extend(message.events)
            if len(got) == 300:
                live = [await publish(events.stub, "test.live", resource, k=k) for k in range(5)]
            if len(got) >= 305:
                break
        batched.cancel()
        old_style: list[events_pb2.Event] = []
        async for message in single:
            assert not message.events, "a client that did not ask gets one event per message"
            old_style.append(message.event)
            if len(old_style) >= 305:
                break
        single.cancel()
    stored = await list_all(events.stub, flt)
    assert [e.sequence for e in got] == [e.sequence for e in stored]
    assert [e.sequence for e in old_style] == [e.sequence for e in stored]
    assert got[-5:] == live
    assert max(sizes) <= 64 and max(sizes) > 1, sizes


async def test_a_live_batch_holds_only_while_events_keep_arriving(
    events: RunningEvents, resource: str
) -> None:
    """A batched reader that fell behind at the live edge (an event already delivered behind
    the next one) holds its batch for `hold`, gathering what arrives meanwhile, in order; an
    event with nothing behind it is returned at once, however long the hold. (The hold here is
    long enough for any machine, and far longer than the test allows a lone event.)"""
    hold = 5.0
    async with events.log.read([], resource, StartAt.new()) as reader:
        await reader.open()
        first = await publish(events.stub, "test.live", resource, k=0)
        assert await reader.next_batch(64, 1 << 20, hold) == [first]
        # Two events delivered and not yet taken: the reader is behind.
        behind = [await publish(events.stub, "test.live", resource, k=k) for k in (1, 2)]

        async def delivered() -> bool:
            return reader.buffered >= 2

        await wait_until(delivered, timeout=30)
        waiting = asyncio.create_task(reader.next_batch(64, 1 << 20, hold))
        more = [await publish(events.stub, "test.live", resource, k=k) for k in range(3, 6)]
        async with asyncio.timeout(60):
            assert await waiting == behind + more
        # Idle now: a lone event is not held (the hold is far longer than this timeout).
        waiting = asyncio.create_task(reader.next_batch(64, 1 << 20, 600.0))
        lone = await publish(events.stub, "test.live", resource, k=6)
        async with asyncio.timeout(30):
            assert await waiting == [lone]


async def test_pipelined_publishes_through_a_nats_restart_are_stored_once_in_order(
    private_log: EventLog, private_nats: EmbeddedNats, resource: str
) -> None:
    """A publisher sends bursts through one pipeline while NATS restarts: every acknowledged
    event is stored exactly once, and the log holds the events in the order they were sent."""
    acknowledged: dict[str, int] = {}
    refused = 0
    sent: list[str] = []
    stop = asyncio.Event()

    async def publisher() -> None:
        nonlocal refused
        n = 0
        while not stop.is_set():
            pipeline = private_log.pipeline(window=16)
            burst = numbered(resource, 40, f"p{n}")
            try:
                for ev in burst:
                    sent.append(ev.id)
                    await pipeline.submit(ev)
                for stored in await pipeline.flush():
                    acknowledged[stored.id] = stored.sequence
            except EventLogUnavailableError:
                refused += 1
            n += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(publisher())
    try:
        async with asyncio.timeout(120):
            while len(acknowledged) < 400:  # noqa: ASYNC110 - waiting on the publisher
                await asyncio.sleep(0.05)
            await asyncio.to_thread(private_nats.stop)
            await asyncio.sleep(1.5)  # longer than the 1 s publish budget: some bursts fail
            await asyncio.to_thread(private_nats.start)
            base = len(acknowledged)
            while len(acknowledged) < base + 200:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            stop.set()
            await task
    finally:
        task.cancel()

    stored: list[events_pb2.Event] = []
    async with private_log.read(subject=resource, start=StartAt.beginning(), follow=False) as r:
        async for ev in r:
            stored.append(ev)
    by_id = {e.id: e.sequence for e in stored}
    assert len(by_id) == len(stored), "no event stored twice"
    for event_id, sequence in acknowledged.items():
        assert by_id.get(event_id) == sequence, f"{event_id} acknowledged but not stored"
    order = {event_id: i for i, event_id in enumerate(sent)}
    positions = [order[e.id] for e in stored]
    assert positions == sorted(positions), "the log keeps the order the events were sent in"
    assert refused, "NATS was down longer than the publish budget: some bursts must fail"
    print(
        f"\npipeline through a NATS restart: {len(acknowledged)} acknowledged, {len(stored)} "
        f"stored of {len(sent)} sent, {refused} bursts refused"
    )
