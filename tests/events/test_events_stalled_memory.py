"""Many stalled StreamEvents calls cost the events service a bounded amount of memory, and it goes
back to the system once they end (QA s26 F4).

QA: one HTTP/2 connection opened 200 StreamEvents calls on distinct subjects and never read
them; 150 events of 16 KB were published to each. The events service went 95 -> 663 MB and
stayed there after the client left. The calls themselves held little (gRPC had handed every
message to the client's HTTP/2 windows, grown by BDP probing); each filter's tap kept its last
1 MiB of events for calls joining later, each event twice (a one-event message and a batch's
piece): 400 MB for 200 filters. Once the calls ended, a tap and its last batch stayed alive in
reference cycles (its cancelled task's traceback) until the cycle collector ran, which an idle
service may not do for minutes, and what was freed stayed in glibc's heaps. Now an event is
kept once, the taps' recent events share HUB_RECENT_BYTES, a tap lets go of its events as it
ends, and the service hands freed memory back (`amelia_events.memory`). Measured with the
service in a process of its own: docs/events.md, "Flow control".
"""

from __future__ import annotations

import asyncio
import gc
import uuid

import grpc
import pytest
from events_helpers import (
    RunningEvents,
    consumers_matching,
    event,
    own_event_log,
    rss_bytes,
    wait_until,
)
from nats.aio.client import Client as NATS

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.settings import Settings
from amelia_events import fanout

STREAMS = 40
PER_SUBJECT = 40
SIZE = 16_000
SHARE = 4 * 1024 * 1024


def items_alive() -> tuple[int, int]:
    """(count, bytes) of the serialized events (`fanout.Item`) alive in this process, without
    running the cycle collector first: what is still held, as in a service where it has not
    run yet."""
    items = [o for o in gc.get_objects() if type(o) is fanout.Item]
    held = sum(
        len(value)
        for item in items
        for slot in type(item).__slots__
        if isinstance(value := getattr(item, slot, None), bytes)
    )
    return len(items), held


async def test_stalled_calls_on_many_filters_hold_each_event_once_and_give_it_all_back(
    events: RunningEvents, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small process-wide share, so that 40 filters of 640 KB each pass it.
    monkeypatch.setattr(fanout, "HUB_RECENT_BYTES", SHARE, raising=False)
    servicer = events.svc.servicer
    assert servicer is not None
    hub = servicer.hub
    await events.log.publish_events([event("test.warm", "tests/warm")])
    base = f"tests/{uuid.uuid4().hex}"
    subjects = [f"{base}s{k}" for k in range(STREAMS)]
    count_before, held_before = items_alive()
    baseline = rss_bytes()
    # One HTTP/2 connection of their own, as the QA's client: calls opened and never read.
    channel = grpc.aio.insecure_channel(events.address)
    stub = events_pb2_grpc.EventServiceStub(channel)
    calls = [
        stub.StreamEvents(
            events_pb2.StreamEventsRequest(filter=events_pb2.EventFilter(subject=subject))
        )
        for subject in subjects
    ]
    try:
        for call in calls:
            await call.initial_metadata()
        blob = "q" * SIZE
        last: dict[str, int] = {}
        for subject in subjects:
            stored = await events.log.publish_events(
                [event("test.stall", subject, n=n, blob=blob) for n in range(PER_SUBJECT)]
            )
            last[subject] = stored[-1].sequence

        def mine() -> list[fanout.Call]:
            return [c for c in servicer.readers if c.subject in last]

        async def all_taken() -> bool:
            # Every event of every call taken from the log: handed to gRPC, or queued.
            open_calls = mine()
            return len(open_calls) == STREAMS and all(
                c.after == last[c.subject] for c in open_calls
            )

        await wait_until(all_taken, timeout=120)
        queued = sum(c.queued_bytes for c in mine())
        count, held = items_alive()
        grown = rss_bytes() - baseline
        print(
            f"\n{STREAMS} stalled calls, {PER_SUBJECT} x {SIZE} B each: "
            f"{count - count_before} events alive, {(held - held_before) / 2**20:.1f} MiB "
            f"({queued / 2**20:.1f} MiB queued for calls); RSS +{grown / 2**20:.0f} MiB "
            "(the test's client included)"
        )
        # The taps' recent events within the process's share, each event once (before: all
        # 25 MiB of them, twice), besides what is queued for the calls themselves.
        assert held - held_before <= SHARE + queued + STREAMS * (SIZE + 200)
    finally:
        for call in calls:
            call.cancel()
        await channel.close()  # the client leaves

    async def all_ended() -> bool:
        return not any(c.subject in subjects for c in servicer.readers) and not any(
            base.replace("/", ".") in f for key in hub.taps for f in key
        )

    await wait_until(all_ended, timeout=30)
    # Nothing of theirs is left waiting for the cycle collector: their events went as they
    # ended (before: the taps' recent events stayed, in their tasks' reference cycles).
    count, held = items_alive()
    assert count <= count_before, f"{count - count_before} events alive, {held - held_before} B"

    # And the process gives the memory back to the system: its RSS comes back down (before: it
    # stayed up with nothing alive, in glibc's heaps; the test's client gave its own back too).
    async def given_back() -> bool:
        return rss_bytes() - baseline <= 24 * 1024 * 1024

    try:
        await wait_until(given_back, timeout=30)
    finally:
        print(f"after the calls ended: RSS +{(rss_bytes() - baseline) / 2**20:.0f} MiB")


@pytest.mark.parametrize("per_message", [0, 16])
async def test_calls_resuming_behind_taps_with_a_small_share_get_every_event_once(
    events: RunningEvents, resource: str, monkeypatch: pytest.MonkeyPatch, per_message: int
) -> None:
    """With many taps each keeps fewer recent events: a call resuming within them joins its
    tap at once, one resuming further behind reads on a reader of its own first; both get
    every event after their position once, in order, then the live ones."""
    monkeypatch.setattr(fanout, "HUB_RECENT_BYTES", 64 * 1024, raising=False)
    monkeypatch.setattr(fanout, "RECENT_MIN_BYTES", 8 * 1024, raising=False)
    servicer = events.svc.servicer
    assert servicer is not None
    hub = servicer.hub

    def request(after: int | None = None) -> events_pb2.StreamEventsRequest:
        message = events_pb2.StreamEventsRequest(
            filter=events_pb2.EventFilter(subject=resource), max_events_per_message=per_message
        )
        if after is not None:
            message.after_sequence = after
        return message

    leader = events.stub.StreamEvents(request())
    await leader.initial_metadata()
    blob = "r" * 1_000
    stored = await events.log.publish_events(
        [event("test.resume", resource, n=n, blob=blob) for n in range(60)]
    )
    sequences = [e.sequence for e in stored]

    dotted = resource.replace("/", ".")

    def own_tap() -> fanout.Tap | None:
        return next((t for t in hub.taps.values() if any(dotted in f for f in t.key)), None)

    async def remembered() -> bool:
        tap = own_tap()
        return tap is not None and bool(tap.recent) and tap.recent[-1].sequence == sequences[-1]

    await wait_until(remembered, timeout=30)
    # Other filters' taps make this one's share smaller: it forgets its oldest events.
    others = [
        events.stub.StreamEvents(
            events_pb2.StreamEventsRequest(
                filter=events_pb2.EventFilter(subject=f"tests/{uuid.uuid4().hex}")
            )
        )
        for _ in range(7)
    ]
    for call in others:
        await call.initial_metadata()
    tap = own_tap()
    assert tap is not None
    print(f"\n{len(hub.taps)} taps, share {hub.recent_share()} B: keeps {len(tap.recent)} events")
    assert tap.recent_bytes <= hub.recent_share()
    assert tap.recent_after > sequences[0]  # forgot some: a resume from there reads first

    resumes = {
        "within": sequences[-3],  # still among the tap's recent events
        "beyond": sequences[5],  # forgotten by the tap: a reader of its own first
        "start": sequences[0] - 1,
    }
    calls = {name: events.stub.StreamEvents(request(after)) for name, after in resumes.items()}
    for call in calls.values():
        await call.initial_metadata()
    live = await events.log.publish_events(
        [event("test.resume", resource, n=n, blob=blob) for n in range(60, 80)]
    )
    everything = sequences + [e.sequence for e in live]
    try:
        for name, call in {"leader": leader, **calls}.items():
            after = resumes.get(name, sequences[0] - 1)
            expected = [s for s in everything if s > after]
            got: list[int] = []
            async for message in call:
                got.extend(
                    [e.sequence for e in message.events]
                    if per_message
                    else [message.event.sequence]
                )
                if len(got) >= len(expected):
                    break
            assert got == expected, name
    finally:
        for call in [leader, *calls.values(), *others]:
            call.cancel()


async def reply_in(nc: NATS) -> None:
    """Until a NATS request of `nc` is made and its reply is in (checked at every turn of the
    event loop: the requesting task has not resumed yet)."""
    asked = False
    while True:
        if nc._resp_map:
            asked = True
        elif asked:
            return
        await asyncio.sleep(0)


async def test_a_call_ends_even_when_its_taps_cancellation_comes_with_a_nats_reply(
    events: RunningEvents, resource: str, settings: Settings
) -> None:
    """What kept the first version of this fix out (session 26: its test hung now and then, a
    call's end stuck closing its tap). A call's end closes its tap, which cancelled the tap's
    task and waited for it. A cancellation that comes as one of the tap's reader's NATS
    requests has its reply, but before the task resumed, is lost on Python 3.11 (nats-py waits
    with `asyncio.wait_for`, which then returns the reply): the reader read on, for nobody, and
    the call never ended. Here the reader makes its requests because its consumer was deleted
    (as when NATS restarts, or drops an idle consumer), and the call ends at that instant."""
    servicer = events.svc.servicer
    assert servicer is not None
    nc = events.log.nc
    client = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=events_pb2.EventFilter(subject=resource))
    )
    await client.initial_metadata()
    (call,) = [c for c in servicer.readers if c.subject == resource]
    tap = call.tap
    assert tap is not None and tap.reader.consumer_name is not None
    stream = settings.EVENTS_STREAM
    try:
        async with own_event_log(settings, "tapclose") as other:
            deleting = asyncio.create_task(
                other.nc.jetstream().delete_consumer(stream, tap.reader.consumer_name)
            )
            # The tap's reader is told, and asks NATS to delete the consumer and make a new one:
            # wait for one of its requests, then for its reply to be in.
            async with asyncio.timeout(60):
                await reply_in(nc)
            # The call ends now, before the reader's task took the reply.
            async with asyncio.timeout(60):  # (a bound for the old code, which never returned)
                await call.close()
            await deleting
        assert tap.task.done() and tap.reader.consumer_name is None
        dotted = resource.replace("/", ".")

        async def no_consumer() -> bool:
            return await consumers_matching(nc.jetstream(), stream, dotted) == []

        await wait_until(no_consumer, timeout=30)
    finally:
        client.cancel()
