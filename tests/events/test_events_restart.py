"""Restarts while a publisher runs: every publish that returned success is in the log, every
one that did not got a clear error, and a subscriber sees every stored event exactly once.

The NATS restart uses a private nats-server (same binary, own port and store), so stopping it
never disturbs other tests sharing the session's server.
"""

from __future__ import annotations

import asyncio

import grpc
from events_helpers import (
    Janitor,
    Outcomes,
    RunningEvents,
    collect,
    consumers_matching,
    follow,
    list_all,
    publish_until,
    wait_until,
)

from amelia.v1 import events_pb2
from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.settings import Settings


def check_outcomes(
    outcomes: Outcomes, log: list[events_pb2.Event], *, shutdown: bool = False
) -> None:
    stored = {e.id: e.sequence for e in log}
    for event_id, sequence in outcomes.ok.items():
        assert stored.get(event_id) == sequence, f"{event_id} returned success but is not stored"
    # While a gRPC server shuts down, gRPC itself cancels calls caught in the shutdown
    # (CANCELLED): a clear "this call failed", like UNAVAILABLE while it is down.
    clear = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    if shutdown:
        clear.add(grpc.StatusCode.CANCELLED)
    for event_id, (code, details) in outcomes.failed.items():
        assert code in clear, (
            event_id,
            code,
            details,
        )
        assert details, f"{event_id} failed without a message"
    # Nothing appears in the log that nobody tried to publish, and nothing twice.
    assert set(stored) <= set(outcomes.ok) | set(outcomes.failed)
    assert len(stored) == len(log)


async def successes_after(outcomes: Outcomes, count: int) -> None:
    target = len(outcomes.ok) + count

    async def enough() -> bool:
        return len(outcomes.ok) >= target

    await wait_until(enough, timeout=60)


async def test_events_service_restart_while_publishing(
    settings: Settings, resource: str, janitor: Janitor
) -> None:
    port = free_port()
    pinned = settings.model_copy(update={"EVENTS_GRPC_PORT": port})
    first = await janitor.start(pinned)
    stub = first.stub  # one channel for the whole test: it reconnects to the restarted service
    marker = await stub.PublishEvent(
        events_pb2.PublishEventRequest(event=events_pb2.Event(type="test.marker", subject=resource))
    )
    outcomes, stop = Outcomes(), asyncio.Event()
    flt = events_pb2.EventFilter(subject=resource, types=["test.tick"])
    seen: list[events_pb2.Event] = []
    stream_errors: list[grpc.StatusCode] = []
    publisher = janitor.task(publish_until(stub, resource, outcomes, stop, timeout=2.0))
    subscriber = janitor.task(follow(stub, flt, marker.event.sequence, seen, stream_errors))

    await successes_after(outcomes, 50)
    await first.svc.stop(grace=1.0)
    await asyncio.sleep(0.5)
    second = await janitor.start(pinned)
    await successes_after(outcomes, 50)
    stop.set()
    await publisher

    log = await list_all(second.stub, flt, page_size=1000, after_sequence=marker.event.sequence)
    check_outcomes(outcomes, log, shutdown=True)

    async def caught_up() -> bool:
        return len(seen) >= len(log)

    await wait_until(caught_up, timeout=60)
    subscriber.cancel()
    assert [e.sequence for e in seen] == [e.sequence for e in log], "every event once, in order"
    assert grpc.StatusCode.UNAVAILABLE in stream_errors, "the stream did break and resume"
    print(
        f"\nservice restart: {len(outcomes.ok)} stored, {len(outcomes.failed)} refused "
        f"({sorted({c.name for c, _ in outcomes.failed.values()})}); "
        f"subscriber resumed {len(stream_errors)}x, saw {len(seen)}"
    )


async def test_nats_restart_while_publishing(
    on_private_nats: RunningEvents, private_nats: EmbeddedNats, resource: str, janitor: Janitor
) -> None:
    running = on_private_nats
    stub = running.stub
    outcomes, stop = Outcomes(), asyncio.Event()
    flt = events_pb2.EventFilter(subject=resource)
    # One stream call for the whole test: the service must carry it across the NATS restart.
    call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt, from_beginning=True))
    publisher = janitor.task(publish_until(stub, resource, outcomes, stop))

    await successes_after(outcomes, 50)
    await asyncio.to_thread(private_nats.stop)
    await asyncio.sleep(2.5)  # longer than the 1 s publish budget: some publishes must fail
    await asyncio.to_thread(private_nats.start)
    await successes_after(outcomes, 50)
    stop.set()
    await publisher

    log = await list_all(stub, flt, page_size=1000)
    check_outcomes(outcomes, log)
    failures = list(outcomes.failed.values())
    assert failures, "NATS was down longer than the publish budget: some publishes must fail"
    assert all(code == grpc.StatusCode.UNAVAILABLE for code, _ in failures)
    assert all("NATS" in d and "stored" in d for _, d in failures), failures[0]

    received = await collect(call, len(log), timeout=60)
    servicer = running.svc.servicer
    assert servicer is not None
    assert [r.resets for r in servicer.readers] and all(r.resets for r in servicer.readers), (
        "the reader recreated its consumer after the restart"
    )
    call.cancel()
    assert [e.sequence for e in received] == [e.sequence for e in log], "no gap, no duplicate"
    # No consumer outlives the stream, including the one NATS lost in the restart.
    js, stream = running.log.js, running.log.settings.EVENTS_STREAM

    async def consumers_gone() -> bool:
        return not await consumers_matching(js, stream, resource.split("/")[1])

    await wait_until(consumers_gone, timeout=30)
    print(
        f"\nNATS restart: {len(outcomes.ok)} stored, {len(failures)} refused with UNAVAILABLE; "
        f"the open stream delivered all {len(received)} without reconnecting"
    )
