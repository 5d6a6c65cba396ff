"""A subscriber 100x slower than the publisher costs the server bounded memory, and another
subscriber still gets every event while the slow one lags far behind."""

from __future__ import annotations

import asyncio

from events_helpers import Janitor, RunningEvents, consumers_matching, rss_bytes, wait_until

from amelia.v1 import events_pb2
from amelia_events.fanout import Call

EVENTS = 6000
BLOB = "x" * 16_000  # ~16 KB per event: ~96 MB published in total
SLOW_DELAY = 0.05  # the publisher manages well over 2,000 events/s here: 100x is ~20/s
# The slow subscriber reads at most this many events until the fast one has them all, so it lags
# far behind however long publishing takes on a busy machine.
SLOW_READS = 300
IN_FLIGHT_LIMIT_BYTES = 16 * 1024 * 1024


async def test_slow_subscriber_is_paced_not_buffered(
    events: RunningEvents, resource: str, janitor: Janitor
) -> None:
    stub = events.stub
    servicer = events.svc.servicer
    assert servicer is not None
    flt = events_pb2.EventFilter(subject=resource)
    first = await events.log.publish("test.big", resource, {"n": -1})
    request = events_pb2.StreamEventsRequest(filter=flt, after_sequence=first.sequence)
    slow_call, fast_call = stub.StreamEvents(request), stub.StreamEvents(request)
    slow_got: list[int] = []
    fast_got: list[int] = []

    async def read(call: object, out: list[int], delay: float) -> None:
        async for item in call:  # type: ignore[attr-defined]
            out.append(item.event.sequence)
            if len(out) == EVENTS:
                return
            if delay:
                await asyncio.sleep(delay)
                if len(out) >= SLOW_READS:
                    await fast  # then reads nothing more: its stream stays open, unread
                    return

    slow = janitor.task(read(slow_call, slow_got, SLOW_DELAY))
    fast = janitor.task(read(fast_call, fast_got, 0))
    dotted = resource.replace("/", ".")

    async def both_open() -> bool:
        return sum(1 for r in servicer.readers if dotted in r.filters[0]) == 2

    await wait_until(both_open)
    slow_reader: Call | None = None
    baseline_rss = rss_bytes()
    peak_rss = baseline_rss
    peak_in_flight = 0
    publishing_done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak_rss, peak_in_flight, slow_reader
        while not publishing_done.is_set() or not fast.done():
            readers = [r for r in servicer.readers if dotted in r.filters[0]]
            if len(readers) == 2:
                slow_reader = min(readers, key=lambda r: r.delivered)
                # Events the server took from the log for the slow client and it has not read:
                # the reader's batch plus what gRPC holds in its send/receive windows.
                peak_in_flight = max(peak_in_flight, slow_reader.delivered - len(slow_got))
            peak_rss = max(peak_rss, rss_bytes())
            await asyncio.sleep(0.05)

    sampler = janitor.task(sample())
    for n in range(EVENTS):
        await events.log.publish("test.big", resource, {"n": n, "blob": BLOB})
    publishing_done.set()
    async with asyncio.timeout(120):
        await fast
    await sampler

    # The fast subscriber got everything, in order, while the slow one is far behind.
    assert len(fast_got) == EVENTS and fast_got == sorted(fast_got)
    assert len(slow_got) <= SLOW_READS
    # The slow one's backlog stays in the log, not in memory: the service took only a bounded
    # part of it for that client, which left the fast one's shared consumer (fanout) instead of
    # holding it up.
    assert slow_reader is not None
    backlog = EVENTS - slow_reader.delivered
    assert backlog > EVENTS // 2
    assert servicer.hub.left_behind >= 1
    event_bytes = len(BLOB) + 200
    in_flight_bytes = peak_in_flight * event_bytes
    print(
        f"\nslow subscriber: read {len(slow_got)}/{EVENTS}; peak in flight {peak_in_flight} "
        f"events ({in_flight_bytes / 2**20:.1f} MiB) of {EVENTS * event_bytes / 2**20:.0f} MiB "
        f"published; RSS growth {(peak_rss - baseline_rss) / 2**20:.1f} MiB; "
        f"log backlog {backlog} events"
    )
    assert in_flight_bytes < IN_FLIGHT_LIMIT_BYTES
    assert slow_reader.buffered <= 256
    assert peak_rss - baseline_rss < EVENTS * event_bytes // 2

    slow.cancel()
    slow_call.cancel()
    fast_call.cancel()

    async def consumers_gone() -> bool:
        return not await consumers_matching(
            events.log.js, events.log.settings.EVENTS_STREAM, resource.split("/")[1]
        )

    await wait_until(consumers_gone)
