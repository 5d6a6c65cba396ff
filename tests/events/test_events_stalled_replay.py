"""A subscriber that replays a long history and stops reading costs the events service a bounded
amount of memory, and still gets every event, once, in order, when it reads again.

Found by the gateway's work (session 25): one stalled replay of a history of ~120 KB events held
~30 MB in the events service. Its reader asked JetStream for 256 events a pull whatever their
size (256 x 120 KB), and 20 replays of 16 KB events asked for more at once than nats-server
lets one connection have pending (64 MiB): it closed the service's connection as a slow
consumer, again at every reconnect, and the replays never finished. Now a pull asks for at most
`BATCH_BYTES` (JetStream's `max_bytes`; one larger event comes alone), and the pulls of a
connection's readers catching up share `IN_FLIGHT_BYTES` (`PullBudget`). Measured with the
service in a process of its own (docs/events.md, "Flow control"): 28-31 MB per stalled replay
before, 2.3-3.8 MB after.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from events_helpers import Janitor, RunningEvents, consumers_matching, event, rss_bytes, wait_until

from amelia.v1 import events_pb2
from amelia_common.embedded import EmbeddedNats
from amelia_common.eventlog import StartAt, stream_config
from amelia_common.eventlog.reader import BATCH_BYTES, pull_budget
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings
from amelia_events.fanout import Call

STALLED = 3


async def publish_history(
    running: RunningEvents, resource: str, count: int, blob: str
) -> list[int]:
    """`count` events of `blob` each on `resource`, stored in batches; their sequences."""
    sequences: list[int] = []
    for start in range(0, count, 40):
        batch = [
            event("test.history", resource, n=n, blob=blob)
            for n in range(start, min(count, start + 40))
        ]
        stored = await running.log.publish_events(batch)
        sequences.extend(e.sequence for e in stored)
    return sequences


def sequences_of(message: events_pb2.StreamEventsResponse) -> list[int]:
    if message.events:
        return [e.sequence for e in message.events]
    return [message.event.sequence]


async def read_all(call: grpc.aio.UnaryStreamCall, count: int, pause: float = 0.0) -> list[int]:
    got: list[int] = []
    async with asyncio.timeout(120):
        async for message in call:
            got.extend(sequences_of(message))
            if len(got) >= count:
                return got
            if pause:
                await asyncio.sleep(pause)
    return got


def calls_on(running: RunningEvents, resource: str) -> list[Call]:
    servicer = running.svc.servicer
    assert servicer is not None
    dotted = resource.replace("/", ".")
    return [c for c in servicer.readers if any(dotted in f for f in c.filters)]


@pytest.mark.parametrize(
    ("count", "size", "per_message"),
    [
        (240, 100_000, 0),  # ~24 MB of large events, one a message
        (240, 100_000, 256),  # the same, batched
        (8000, 1_000, 0),  # ~10 MB of small ones: a pull is 256 events, not 1 MiB
    ],
)
async def test_a_stalled_replay_holds_a_bounded_part_of_the_history(
    events: RunningEvents, resource: str, count: int, size: int, per_message: int
) -> None:
    history = await publish_history(events, resource, count, "x" * size)
    event_bytes = size + 300
    request = events_pb2.StreamEventsRequest(
        filter=events_pb2.EventFilter(subject=resource),
        from_beginning=True,
        max_events_per_message=per_message,
    )
    baseline = rss_bytes()
    # Clients that subscribe and then never read: gRPC takes what their windows hold, then
    # the service's writes wait, and so do its readers.
    stalled = [events.stub.StreamEvents(request) for _ in range(STALLED)]
    for call in stalled:
        await call.initial_metadata()

    async def all_stalled() -> bool:
        # Each call has its own reader (it is behind: no tap), which has received all of its
        # last pull (nothing asked for is on its way: the connection's budget is free again,
        # and a reader about to pull again would hold some of it) and holds what its call did
        # not hand to gRPC yet: some of that pull, or none when the call's message waiting for
        # the client's window was its last event.
        calls = calls_on(events, resource)
        return (
            len(calls) == STALLED
            and pull_budget(events.log.nc).used == 0
            and all(
                c.reader is not None
                and c.reader.peak_buffered_bytes > 0
                and (c.reader.buffered_bytes > 0 or c.sent == c.reader.last_sequence)
                for c in calls
            )
        )

    await wait_until(all_stalled, timeout=60)
    calls = calls_on(events, resource)
    held = [c.held_bytes for c in calls]
    peaks = [c.reader.peak_buffered_bytes for c in calls if c.reader is not None]
    growth = rss_bytes() - baseline
    print(
        f"\n{STALLED} stalled replays of {count} events ({count * event_bytes / 2**20:.0f}"
        f" MiB): taken {[c.delivered for c in calls]} events, held {held} bytes, reader peaks "
        f"{peaks}; RSS growth {growth / 2**20:.1f} MiB (test's client included)"
    )
    # What a reader ever held for its call: one pull, at most BATCH_BYTES (or one event), at
    # most 256 events.
    for peak in peaks:
        assert peak <= BATCH_BYTES + event_bytes, peaks
    for c in calls:
        assert c.held_bytes <= BATCH_BYTES + event_bytes
        assert c.buffered <= 256 + 1  # (and a status message JetStream may have sent)
        assert c.delivered < count  # the rest waits in the log
    if size >= 100_000:
        # What a user sees: the process did not take the history in for them (it was ~20 MB
        # a call before). Generous: the test's own gRPC client is in this process too (with
        # small events its windows alone hold more than the service does).
        assert growth < STALLED * count * event_bytes // 2, growth / 2**20

    # Reading again, each gets every event once, in order, from where it was.
    for call in stalled:
        assert await read_all(call, count) == history
        call.cancel()


async def test_a_slow_reader_gets_every_event_history_and_live(
    events: RunningEvents, resource: str, janitor: Janitor
) -> None:
    history = await publish_history(events, resource, 60, "y" * 20_000)
    request = events_pb2.StreamEventsRequest(
        filter=events_pb2.EventFilter(subject=resource), from_beginning=True
    )
    batched = events_pb2.StreamEventsRequest()
    batched.CopyFrom(request)
    batched.max_events_per_message = 8
    slow = events.stub.StreamEvents(request)
    slow_batched = events.stub.StreamEvents(batched)
    await slow.initial_metadata()
    await slow_batched.initial_metadata()
    live_count = 60
    readers = [
        janitor.task(read_all(slow, len(history) + live_count, pause=0.01)),
        janitor.task(read_all(slow_batched, len(history) + live_count, pause=0.02)),
    ]
    live = await publish_history(events, resource, live_count, "z" * 20_000)
    for task in readers:
        assert await task == history + live
    for call in (slow, slow_batched):
        call.cancel()


async def test_an_event_larger_than_a_pull_comes_alone(
    events: RunningEvents, resource: str
) -> None:
    """JetStream refuses a pull's `max_bytes` to an event larger than it (409 "Message Size
    Exceeds MaxBytes", nothing sent): the reader asks for that one alone, and goes on."""
    sizes = [1_000, 90_000, 1_000, 1_000, 150_000, 120_000, 1_000]
    stored = [
        (await events.log.publish_events([event("test.sized", resource, n=n, blob="s" * size)]))[
            0
        ].sequence
        for n, size in enumerate(sizes)
    ]
    got: list[int] = []
    async with events.log.read(
        [], resource, StartAt.beginning(), follow=False, batch_bytes=64 * 1024
    ) as reader:
        async for e in reader:
            got.append(e.sequence)
        peak = reader.peak_buffered_bytes
    assert got == stored
    assert peak <= 150_000 + 1_000  # one large event at a time, never two


async def test_readers_catching_up_together_share_the_connections_budget(
    events: RunningEvents, resource: str
) -> None:
    """Readers catching up on one connection never have more asked for and not yet received
    than the budget (nats-server closes a connection with more than its max_pending, 64 MiB
    by default, waiting for it, as a slow consumer); each still gets everything, in order."""
    history = await publish_history(events, resource, 80, "w" * 16_000)
    budget = pull_budget(events.log.nc)
    limit, budget.limit = budget.limit, 256 * 1024  # room for two pulls of 128 KiB at once
    peak, budget.peak = budget.peak, 0
    try:

        async def replay() -> list[int]:
            async with events.log.read(
                [], resource, StartAt.beginning(), follow=False, batch_bytes=128 * 1024
            ) as reader:
                return [e.sequence async for e in reader]

        results = await asyncio.gather(*(replay() for _ in range(8)))
        assert all(r == history for r in results)
        assert budget.peak <= budget.limit
        assert budget.waited > 0  # some pulls did wait for room
        assert budget.used == 0  # all given back
    finally:
        budget.limit = limit
        budget.peak = max(peak, budget.peak)


async def test_streams_past_events_max_streams_are_resource_exhausted(
    settings: Settings, janitor: Janitor, resource: str
) -> None:
    running = await janitor.start(settings.model_copy(update={"EVENTS_MAX_STREAMS": 2}))
    flt = events_pb2.EventFilter(subject=resource)
    held = [running.stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt)) for _ in "ab"]
    for call in held:
        await call.initial_metadata()
    one_more = running.stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await one_more.initial_metadata()
        async for _ in one_more:
            pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = info.value.details() or ""
    assert "at most 2 StreamEvents calls at once (EVENTS_MAX_STREAMS)" in details, details
    assert "close some" in details, details
    servicer = running.svc.servicer
    assert servicer is not None and servicer.streams_refused == 1
    # A stream that ends makes room for another.
    held[0].cancel()

    async def room() -> bool:
        return servicer.streams < 2

    await wait_until(room)
    again = running.stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt))
    await again.initial_metadata()
    stored = (await running.log.publish_events([event("test.after", resource)]))[0]
    async with asyncio.timeout(30):
        async for message in again:
            assert message.event.sequence == stored.sequence
            break
    again.cancel()
    held[1].cancel()

    async def consumers_gone() -> bool:
        return not await consumers_matching(
            running.log.js, running.log.settings.EVENTS_STREAM, resource.split("/")[1]
        )

    await wait_until(consumers_gone)


async def test_a_reader_that_caught_up_gives_its_room_back(
    events: RunningEvents, resource: str
) -> None:
    """A pull that reaches the end of the log stays open for what is published next (until it
    expires): the room it reserved is given back as the log's last event arrives, not then."""
    history = await publish_history(events, resource, 5, "v" * 1_000)
    budget = pull_budget(events.log.nc)
    async with events.log.read([], resource, StartAt.beginning()) as reader:
        got = [(await anext(reader)).sequence for _ in history]
        assert got == history
        assert reader.pending == 0
        assert budget.used == 0
        live = (await events.log.publish_events([event("test.live", resource)]))[0]
        assert (await anext(reader)).sequence == live.sequence


async def test_events_max_consumers_is_the_streams_limit_when_set(
    settings: Settings, private_nats: EmbeddedNats, janitor: Janitor
) -> None:
    """EVENTS_MAX_CONSUMERS sets the stream's `max_consumers`; 0 (the default) leaves the limit
    the stream has (nats-server's default, or one an operator gave it) alone."""
    isolated = settings.model_copy(update={"NATS_URL": private_nats.url})
    nc = await connect_nats(isolated, "test-max-consumers-setting")
    try:
        config = stream_config(isolated)
        assert config.max_consumers is None
        config.max_consumers = 7  # given by hand
        await nc.jetstream().add_stream(config)
        js = nc.jetstream()
        running = await janitor.start(isolated)  # EVENTS_MAX_CONSUMERS=0
        assert (await js.stream_info(isolated.EVENTS_STREAM)).config.max_consumers == 7
        await running.svc.stop(grace=1.0)
        await janitor.start(isolated.model_copy(update={"EVENTS_MAX_CONSUMERS": 3}))
        assert (await js.stream_info(isolated.EVENTS_STREAM)).config.max_consumers == 3
    finally:
        await nc.close()
