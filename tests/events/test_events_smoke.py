"""Each RPC answers over a real channel: publish, get, list, stream."""

from __future__ import annotations

import asyncio

from events_helpers import RunningEvents

from amelia.v1 import events_pb2


async def test_publish_get_list_stream(events: RunningEvents, resource: str) -> None:
    stub = events.stub
    stream = stub.StreamEvents(
        events_pb2.StreamEventsRequest(
            filter=events_pb2.EventFilter(subject=resource), from_beginning=True
        )
    )
    published = []
    for i in range(3):
        event = events_pb2.Event(type="test.happened", subject=resource)
        event.data.update({"i": i})
        resp = await stub.PublishEvent(events_pb2.PublishEventRequest(event=event))
        published.append(resp.event)
    assert [e.sequence for e in published] == sorted(e.sequence for e in published)

    got = await stub.GetEvent(events_pb2.GetEventRequest(name=f"events/{published[1].sequence}"))
    assert got.event.id == published[1].id and got.event.data["i"] == 1

    page = await stub.ListEvents(
        events_pb2.ListEventsRequest(filter=events_pb2.EventFilter(subject=resource))
    )
    assert [e.id for e in page.events] == [e.id for e in published]

    received = []
    async with asyncio.timeout(20):
        async for item in stream:
            received.append(item.event.id)
            if len(received) == 3:
                break
    stream.cancel()
    assert received == [e.id for e in published]
