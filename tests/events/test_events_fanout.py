"""StreamEvents calls on one filter share one consumer (amelia_events.fanout), and each still
gets exactly its own stream: every matching event after its start, in order, once.

A client sees the same stream whether it shares a consumer or not; what sharing must never
do is hold one client up for another (a stalled one leaves the shared consumer and catches up
on its own), give a late joiner a gap or a repeat, or mix filters.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from events_helpers import (
    Janitor,
    Outcomes,
    RunningEvents,
    consumers_matching,
    event,
    list_all,
    publish_until,
    wait_until,
)

from amelia.v1 import events_pb2
from amelia_common.embedded import EmbeddedNats
from amelia_common.settings import Settings
from amelia_events import fanout

BLOB = "x" * 4000  # ~4 KB events: the stalled call's queue bound (2 MiB) is passed quickly
EVENTS = 4000


def request(
    subject: str, *, types: tuple[str, ...] = (), per_message: int = 0, **start: object
) -> events_pb2.StreamEventsRequest:
    return events_pb2.StreamEventsRequest(
        filter=events_pb2.EventFilter(subject=subject, types=list(types)),
        max_events_per_message=per_message,
        **start,
    )


async def read(call: grpc.aio.UnaryStreamCall, count: int, timeout: float = 120.0) -> list[int]:
    """The sequences of the next `count` events of a call, whatever its message shape."""
    got: list[int] = []
    async with asyncio.timeout(timeout):
        async for message in call:
            got += [e.sequence for e in message.events] or [message.event.sequence]
            if len(got) >= count:
                break
    return got


async def publish_many(
    events: RunningEvents, subject: str, count: int, **data: object
) -> list[int]:
    """`count` events on `subject`, stored in order (batches of 200); their sequences."""
    sequences: list[int] = []
    for first in range(0, count, 200):
        batch = [
            event("test.tick", subject, n=n, **data) for n in range(first, min(count, first + 200))
        ]
        sequences += [e.sequence for e in await events.log.publish_events(batch)]
    return sequences


async def consumers(events: RunningEvents, subject: str) -> int:
    js, stream = events.log.js, events.log.settings.EVENTS_STREAM
    return len(await consumers_matching(js, stream, subject.split("/")[1]))


async def test_many_streams_share_one_consumer_and_a_stalled_one_holds_up_none(
    events: RunningEvents, resource: str
) -> None:
    servicer = events.svc.servicer
    assert servicer is not None
    first = await events.log.publish("test.tick", resource, {"n": -1})
    start = {"after_sequence": first.sequence}
    calls = [
        events.stub.StreamEvents(request(resource, per_message=(0, 16, 256)[i % 3], **start))
        for i in range(12)
    ]
    stalled = events.stub.StreamEvents(request(resource, **start))
    for call in [*calls, stalled]:
        await call.initial_metadata()
    assert await consumers(events, resource) == 1, "13 calls at the live edge, one consumer"

    # 16 MB are published, 50 events at a time, each batch once every reader has the one
    # before: the readers never fall far behind, the stalled call falls past its queue and
    # gRPC's windows.
    got: list[list[int]] = [[] for _ in calls]
    progress = asyncio.Condition()

    async def reader(mine: list[int], call: grpc.aio.UnaryStreamCall) -> None:
        async for message in call:
            mine += [e.sequence for e in message.events] or [message.event.sequence]
            async with progress:
                progress.notify_all()
            if len(mine) >= EVENTS:
                return

    readers = [
        asyncio.create_task(reader(mine, call)) for mine, call in zip(got, calls, strict=True)
    ]
    published: list[int] = []
    async with asyncio.timeout(120):
        while len(published) < EVENTS:
            published += await publish_many(events, resource, 50, blob=BLOB)
            count = len(published)
            async with progress:
                await progress.wait_for(lambda: all(len(g) >= count for g in got))  # noqa: B023
    await asyncio.gather(*readers)
    assert all(mine == published for mine in got), "every reader: every event, in order, once"
    assert servicer.hub.left_behind == 1, "the stalled call left the shared consumer, only it"
    assert await consumers(events, resource) == 1, "the readers still share one consumer"

    # The stalled client reads at last: its stream resumes where its queue ended, no gap.
    assert await read(stalled, len(published)) == published
    for call in [*calls, stalled]:
        call.cancel()

    async def none_left() -> bool:
        return not servicer.hub.taps and await consumers(events, resource) == 0

    await wait_until(none_left)


@pytest.mark.parametrize("recent", [fanout.RECENT_EVENTS, 8])
async def test_a_stream_joining_late_gets_exactly_what_it_asked_for(
    events: RunningEvents, resource: str, recent: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With 8 recent events kept, a call resuming 50 back cannot join at once: it reads on its
    # own reader first, then joins.
    monkeypatch.setattr(fanout, "RECENT_EVENTS", recent)
    early = events.stub.StreamEvents(request(resource, per_message=8))
    await early.initial_metadata()
    history = await publish_many(events, resource, 100)
    late = {
        "from the beginning": (request(resource, from_beginning=True), history),
        "after the 50th": (request(resource, after_sequence=history[49]), history[50:]),
        "after the 95th, batched": (
            request(resource, after_sequence=history[94], per_message=4),
            history[95:],
        ),
        "only new": (request(resource), []),
    }
    calls = {name: events.stub.StreamEvents(req) for name, (req, _) in late.items()}
    for call in calls.values():
        await call.initial_metadata()
    live = await publish_many(events, resource, 100)

    assert await read(early, 200) == history + live
    for name, (_, before) in late.items():
        assert await read(calls[name], len(before) + 100) == before + live, name

    async def shared() -> bool:
        return await consumers(events, resource) == 1

    await wait_until(shared)  # every call caught up and joined the one consumer
    more = await publish_many(events, resource, 10)
    for call in [early, *calls.values()]:
        assert await read(call, 10) == more
        call.cancel()


async def test_streams_share_a_consumer_only_with_the_same_filter(
    events: RunningEvents, resource: str
) -> None:
    other = f"tests/{uuid.uuid4().hex}"
    filters = {
        "everything on the resource": (resource, ()),
        "test.a": (resource, ("test.a",)),
        "test.a and test.b": (resource, ("test.a", "test.b")),
        "test.b and test.a": (resource, ("test.b", "test.a")),  # the same set: shares
        "test.*": (resource, ("test.*",)),
        "the other resource": (other, ()),
    }
    calls = {
        name: events.stub.StreamEvents(request(subject, types=types, per_message=n % 2 * 64))
        for n, (name, (subject, types)) in enumerate(filters.items())
    }
    for call in calls.values():
        await call.initial_metadata()
    stored: list[events_pb2.Event] = []
    for n in range(30):
        for kind in ("test.a", "test.b", "test.c.deep"):
            for subject in (resource, other):
                stored += await events.log.publish_events([event(kind, subject, n=n)])

    def matching(subject: str, types: tuple[str, ...]) -> list[int]:
        def wanted(e: events_pb2.Event) -> bool:
            # `test.*` matches one or more tokens after `test.` (a trailing `*`).
            return not types or e.type in types or ("test.*" in types and e.type != "test")

        return [e.sequence for e in stored if e.subject == subject and wanted(e)]

    for name, (subject, types) in filters.items():
        expected = matching(subject, types)
        assert await read(calls[name], len(expected)) == expected, name
    # Five filters: "test.a and test.b" and "test.b and test.a" share one consumer.
    assert len(events.svc.servicer.hub.taps) >= 5  # type: ignore[union-attr]
    assert await consumers(events, resource) == 4
    assert await consumers(events, other) == 1
    for call in calls.values():
        call.cancel()


async def test_streams_sharing_a_consumer_carry_on_through_a_nats_restart(
    on_private_nats: RunningEvents, private_nats: EmbeddedNats, resource: str, janitor: Janitor
) -> None:
    running = on_private_nats
    servicer = running.svc.servicer
    assert servicer is not None
    calls = [
        running.stub.StreamEvents(request(resource, per_message=n, from_beginning=True))
        for n in (0, 0, 32, 32)
    ]
    for call in calls:
        await call.initial_metadata()
    assert await consumers(running, resource) == 1
    outcomes, stop = Outcomes(), asyncio.Event()
    publisher = janitor.task(publish_until(running.stub, resource, outcomes, stop))

    async def stored(count: int) -> None:
        target = len(outcomes.ok) + count

        async def enough() -> bool:
            return len(outcomes.ok) >= target

        await wait_until(enough, timeout=60)

    await stored(50)
    await asyncio.to_thread(private_nats.stop)
    await asyncio.sleep(2.5)  # the outage: longer than the 1 s publish budget
    await asyncio.to_thread(private_nats.start)
    await stored(50)
    stop.set()
    await publisher

    log = [
        e.sequence for e in await list_all(running.stub, events_pb2.EventFilter(subject=resource))
    ]
    for call in calls:
        assert await read(call, len(log)) == log, "no gap, no duplicate, through the restart"
    (tap,) = servicer.hub.taps.values()
    assert tap.reader.resets >= 1, "the shared reader recreated its consumer"
    assert len(tap.calls) == len(calls)
    for call in calls:
        call.cancel()


async def test_at_shutdown_each_shared_stream_names_its_own_resume_point(
    settings: Settings, resource: str, janitor: Janitor
) -> None:
    running = await janitor.start(settings)
    early = running.stub.StreamEvents(request(resource))
    await early.initial_metadata()
    first = await publish_many(running, resource, 5)
    late = running.stub.StreamEvents(request(resource, per_message=8))
    other = running.stub.StreamEvents(request(resource, types=("test.other",)))
    for call in (late, other):
        await call.initial_metadata()  # joined after the five: has none of them
    marker = await running.log.publish("test.other", resource, {})
    second = await publish_many(running, resource, 3)
    assert await read(early, 9) == [*first, marker.sequence, *second]
    assert await read(late, 4) == [marker.sequence, *second]
    assert await read(other, 1) == [marker.sequence]
    assert len(running.svc.servicer.hub.taps) == 2  # type: ignore[union-attr]

    await running.svc.stop(grace=5.0)
    for call, last in ((early, second[-1]), (late, second[-1]), (other, marker.sequence)):
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await read(call, 1)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"after_sequence={last}" in (ended.value.details() or "")
