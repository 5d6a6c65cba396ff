"""StreamEvents: complete and ordered under concurrent publishers, exact resume, clean endings."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from events_helpers import (
    Janitor,
    RunningEvents,
    collect,
    consumers_matching,
    list_all,
    publish,
    wait_until,
)

from amelia.v1 import events_pb2
from amelia_common.eventlog import EventLog
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

PUBLISHERS = 8
TOTAL = 10_000


async def test_ten_thousand_events_from_concurrent_publishers_arrive_complete_in_order_once(
    events: RunningEvents, settings: Settings, janitor: Janitor
) -> None:
    collection = f"c{uuid.uuid4().hex[:12]}"
    flt = events_pb2.EventFilter(subject=f"{collection}/*")
    start = await publish(events.stub, "test.marker", f"{collection}/start")
    stream = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=flt, after_sequence=start.sequence)
    )
    receiving = janitor.task(collect(stream, TOTAL, timeout=120))

    # Several publishers, each on its own NATS connection, each publishing its share in order
    # (awaiting every acknowledgement) while all of them run at the same time.
    async def publisher(index: int) -> list[events_pb2.Event]:
        nc = await connect_nats(settings, f"test-publisher-{index}")
        log = EventLog(nc, settings, source=f"tests.publisher{index}")
        try:
            return [
                await log.publish("test.counted", f"{collection}/p{index}", {"n": n})
                for n in range(TOTAL // PUBLISHERS)
            ]
        finally:
            await nc.close()

    stored = [
        e for batch in await asyncio.gather(*map(publisher, range(PUBLISHERS))) for e in batch
    ]
    received = await receiving
    stream.cancel()

    sequences = [e.sequence for e in received]
    assert len(received) == TOTAL
    assert sequences == sorted(sequences) and len(set(sequences)) == TOTAL, "in order, none twice"
    assert {e.id for e in received} == {e.id for e in stored}, "complete: every stored event"
    # Events about one subject arrive in the order they were published.
    for index in range(PUBLISHERS):
        counts = [int(e.data["n"]) for e in received if e.subject == f"{collection}/p{index}"]
        assert counts == list(range(TOTAL // PUBLISHERS))

    # History agrees with the live stream, and a huge page size is capped at 1000.
    page = await events.stub.ListEvents(events_pb2.ListEventsRequest(filter=flt, page_size=5000))
    assert len(page.events) == 1000 and page.next_page_token
    history = await list_all(events.stub, flt, page_size=1000)
    assert [e.sequence for e in history] == [start.sequence, *sequences]


async def test_resume_after_k_gives_exactly_the_later_events(
    events: RunningEvents, resource: str
) -> None:
    stored = [await publish(events.stub, "test.step", resource, i=i) for i in range(40)]
    flt = events_pb2.EventFilter(subject=resource)
    first = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=flt, from_beginning=True)
    )
    k = 17
    seen = await collect(first, k)
    first.cancel()  # the client drops after event k
    assert [e.id for e in seen] == [e.id for e in stored[:k]]

    more = [await publish(events.stub, "test.step", resource, i=i) for i in range(40, 50)]
    resumed = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=flt, after_sequence=seen[-1].sequence)
    )
    rest = await collect(resumed, len(stored) + len(more) - k)
    assert [e.id for e in rest] == [e.id for e in (stored + more)[k:]]
    # ...and it stays live: the next event arrives too, and nothing else came in between.
    live = await publish(events.stub, "test.step", resource, i=50)
    assert [e.id for e in await collect(resumed, 1)] == [live.id]
    resumed.cancel()


async def test_start_time_and_only_new(events: RunningEvents, resource: str) -> None:
    flt = events_pb2.EventFilter(subject=resource)
    before = await publish(events.stub, "test.step", resource, i=0)
    await asyncio.sleep(0.05)
    after = await publish(events.stub, "test.step", resource, i=1)

    by_time = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=flt, start_time=after.time)
    )
    assert [e.id for e in await collect(by_time, 1)] == [after.id]
    by_time.cancel()
    listed = await list_all(events.stub, flt, start_time=after.time)
    assert [e.id for e in listed] == [after.id]
    assert before.id not in {e.id for e in listed}

    # No start position: only events published after the stream opened. The consumer exists
    # once the reader appears on the service, so wait for that before publishing.
    only_new = events.stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt))
    await only_new.initial_metadata()
    servicer = events.svc.servicer
    assert servicer is not None

    async def reader_open() -> bool:
        dotted = resource.replace("/", ".")
        return any(r.consumer_name and dotted in r.filters[0] for r in servicer.readers)

    await wait_until(reader_open)
    new = await publish(events.stub, "test.step", resource, i=2)
    assert [e.id for e in await collect(only_new, 1)] == [new.id]
    only_new.cancel()


async def test_client_cancel_deletes_its_consumer(events: RunningEvents, resource: str) -> None:
    flt = events_pb2.EventFilter(subject=resource)
    await publish(events.stub, "test.step", resource)
    calls = [
        events.stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt, from_beginning=True))
        for _ in range(3)
    ]
    for call in calls:
        await collect(call, 1)
    js = events.log.js
    stream = events.log.settings.EVENTS_STREAM
    # Caught up on one filter, the three share one consumer (amelia_events.fanout).
    assert len(await consumers_matching(js, stream, resource.split("/")[1])) == 1
    for call in calls:
        call.cancel()

    servicer = events.svc.servicer
    assert servicer is not None
    dotted = resource.replace("/", ".")

    async def all_gone() -> bool:
        readers = [r for r in servicer.readers if dotted in r.filters[0]]
        return not readers and not await consumers_matching(js, stream, resource.split("/")[1])

    await wait_until(all_gone)


async def test_a_reader_names_its_consumer_only_once_the_consumer_exists(
    events: RunningEvents, resource: str
) -> None:
    """Callers (the service's metrics, tests) may look the consumer up as soon as it is named."""
    async with events.log.read([], resource) as reader:
        opening = asyncio.create_task(reader.open())
        async with asyncio.timeout(20):
            while reader.consumer_name is None:  # noqa: ASYNC110 - watching every loop iteration
                await asyncio.sleep(0)
        name = reader.consumer_name
        info = await events.log.js.consumer_info(events.log.settings.EVENTS_STREAM, name)
        assert info.name == name
        await opening


async def test_shutdown_ends_open_streams_promptly_with_resume_hint(
    settings: Settings, resource: str, janitor: Janitor
) -> None:
    running = await janitor.start(settings)
    stub = running.stub
    last = await publish(stub, "test.step", resource)
    flt = events_pb2.EventFilter(subject=resource)
    call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt, from_beginning=True))
    await collect(call, 1)
    js, stream = running.log.js, running.log.settings.EVENTS_STREAM
    assert await consumers_matching(js, stream, resource.split("/")[1])

    loop = asyncio.get_running_loop()
    began = loop.time()
    await running.svc.stop(grace=30.0)  # a long grace: the stream must not need it
    assert loop.time() - began < 10.0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(call, 1)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"after_sequence={last.sequence}" in (info.value.details() or "")
    await running.channel.close()

    # The consumer went with the stream (checked over a fresh connection).
    nc = await connect_nats(settings, "test-check")
    try:
        remaining = await consumers_matching(nc.jetstream(), stream, resource.split("/")[1])
        assert remaining == []
    finally:
        await nc.close()


async def test_a_new_only_stream_is_subscribed_once_its_headers_arrive(
    events: RunningEvents, resource: str
) -> None:
    """Awaiting the headers is the race-free way to subscribe to "only new" events."""
    call = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=events_pb2.EventFilter(subject=resource))
    )
    try:
        await asyncio.wait_for(call.initial_metadata(), 10)
        published = await events.log.publish("system.warning", resource, {"n": 1})
        reply = await asyncio.wait_for(call.read(), 10)
        assert reply.event.sequence == published.sequence
    finally:
        call.cancel()


async def test_every_call_carries_its_request_id(events: RunningEvents) -> None:
    call = events.stub.ListEvents(
        events_pb2.ListEventsRequest(page_size=1), metadata=(("x-request-id", "trace-7"),)
    )
    await call
    assert ("x-request-id", "trace-7") in tuple(await call.trailing_metadata())
