"""An event id published again (JetStream keeps the first: `Nats-Msg-Id`) is answered truthfully.

QA s21 F1: the reply carried the stored event's sequence with the request's data, type, subject
and time, which were never stored. Now a retry (same type, subject, data) gets the event as
stored, equal to what GetEvent and ListEvents return; an id reused for other content is
ALREADY_EXISTS naming the id and the stored sequence, and nothing is stored — for a batch, once
its other events are.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from events_helpers import RunningEvents, event, list_all

from amelia.v1 import events_pb2


def with_id(ev: events_pb2.Event, event_id: str) -> events_pb2.Event:
    ev.id = event_id
    return ev


async def publish_one(events: RunningEvents, ev: events_pb2.Event) -> events_pb2.Event:
    reply = await events.stub.PublishEvent(events_pb2.PublishEventRequest(event=ev))
    return reply.event


async def get(events: RunningEvents, sequence: int) -> events_pb2.Event:
    reply = await events.stub.GetEvent(events_pb2.GetEventRequest(name=f"events/{sequence}"))
    return reply.event


async def refused(call: object) -> str:
    """The details of the ALREADY_EXISTS the awaitable `call` must end with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS, caught.value.details()
    return caught.value.details() or ""


def new_id() -> str:
    return f"reuse-{uuid.uuid4().hex}"


async def test_a_retry_gets_the_event_as_stored(events: RunningEvents, resource: str) -> None:
    event_id = new_id()
    first = await publish_one(events, with_id(event("app.x", resource, v=1), event_id))
    # Time left empty: stamped anew for the retry, which must not make it another event.
    again = await publish_one(events, with_id(event("app.x", resource, v=1), event_id))
    assert again == first == await get(events, first.sequence)
    assert await list_all(events.stub, events_pb2.EventFilter(subject=resource)) == [first]

    # A source or correlation id the retry leaves empty is the stored one's.
    tagged_id = new_id()
    tagged = with_id(event("app.x", resource, v=2), tagged_id)
    tagged.source, tagged.correlation_id = "tests.qa", "corr-1"
    stored = await publish_one(events, tagged)
    bare = await publish_one(events, with_id(event("app.x", resource, v=2), tagged_id))
    assert bare == stored and (bare.source, bare.correlation_id) == ("tests.qa", "corr-1")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"data": {"v": 2}}, "different data"),
        (
            {"type": "app.other", "subject": "x/y", "data": {"v": 2}},
            "different type, subject and data",
        ),
        ({"correlation_id": "another"}, "different correlation_id"),
        ({"source": "tests.other"}, "different source"),
    ],
)
async def test_an_id_reused_for_other_content_is_already_exists(
    events: RunningEvents, resource: str, change: dict[str, object], named: str
) -> None:
    event_id = new_id()
    original = with_id(event("app.x", resource, v=1), event_id)
    original.source, original.correlation_id = "tests.qa", "corr-1"
    first = await publish_one(events, original)

    reused = with_id(event("app.x", resource, v=1), event_id)
    reused.source, reused.correlation_id = "tests.qa", "corr-1"
    for field, value in change.items():
        if field == "data":
            reused.ClearField("data")
            reused.data.update(value)  # type: ignore[arg-type]
        else:
            setattr(reused, field, value)
    details = await refused(events.stub.PublishEvent(events_pb2.PublishEventRequest(event=reused)))
    assert f"event id {event_id!r} is already stored at sequence {first.sequence}" in details
    assert named in details and "publish it with a new id" in details, details
    assert await get(events, first.sequence) == first
    assert await list_all(events.stub, events_pb2.EventFilter(subject=resource)) == [first]
    elsewhere = await list_all(events.stub, events_pb2.EventFilter(types=["app.other"]))
    assert all(e.id != event_id for e in elsewhere)


async def test_a_batch_answers_each_event_as_stored(events: RunningEvents, resource: str) -> None:
    old_id = new_id()
    old = await publish_one(events, with_id(event("app.x", resource, v=1), old_id))
    batch = [
        with_id(event("app.x", resource, n=1), new_id()),
        with_id(event("app.x", resource, v=1), old_id),  # a retry of `old`
        with_id(event("app.x", resource, n=2), new_id()),
    ]
    reply = await events.stub.PublishEvents(events_pb2.PublishEventsRequest(events=batch))
    assert reply.events[1] == old
    for stored in reply.events:
        assert stored == await get(events, stored.sequence)
    listed = await list_all(events.stub, events_pb2.EventFilter(subject=resource))
    assert listed == [old, reply.events[0], reply.events[2]]


async def test_a_batch_with_a_reused_id_is_refused_once_its_other_events_are_stored(
    events: RunningEvents, resource: str
) -> None:
    """The events of a batch are written before JetStream can say an id is taken, so the others
    are stored; the error names the refused one and says so, and the same batch with a new id
    for it returns every event as stored, each once."""
    old_id = new_id()
    old = await publish_one(events, with_id(event("app.x", resource, v=1), old_id))
    batch = [
        with_id(event("app.x", resource, n=1), new_id()),
        with_id(event("app.bdup", resource, v=2), old_id),
        with_id(event("app.x", resource, n=2), new_id()),
    ]
    details = await refused(
        events.stub.PublishEvents(events_pb2.PublishEventsRequest(events=batch))
    )
    assert f"event id {old_id!r} is already stored at sequence {old.sequence}" in details, details
    assert "different type and data" in details
    assert "the batch's 2 other events are stored" in details, details
    listed = await list_all(events.stub, events_pb2.EventFilter(subject=resource))
    assert [e.data for e in listed] == [old.data, batch[0].data, batch[2].data]

    batch[1].id = new_id()
    reply = await events.stub.PublishEvents(events_pb2.PublishEventsRequest(events=batch))
    assert list(reply.events[::2]) == listed[1:], "the others come back as stored, once"
    assert reply.events[1] == await get(events, reply.events[1].sequence)
    assert await list_all(events.stub, events_pb2.EventFilter(subject=resource)) == [
        *listed,
        reply.events[1],
    ]
