"""NATS down behind the events service: every call is a clear UNAVAILABLE naming NATS, never
silence, and everything works again once NATS is back.

The test's own nats-server is killed by its pid (SIGKILL: no goodbye to its clients) while the
service runs. A StreamEvents call made meanwhile cannot open its JetStream consumer: it ends
within EVENTS_PUBLISH_TIMEOUT_SECONDS (1 s here) with UNAVAILABLE, like the unary RPCs. A stream
already open when NATS went away waits for it and carries on: no gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from events_helpers import Janitor, RunningEvents, collect, event, publish, wait_until

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.embedded import EmbeddedNats

# A hang guard only (no speed is asserted): a call that waits this long waits silently.
SILENCE = 60.0


def kill(nats: EmbeddedNats) -> None:
    """SIGKILL the test's own nats-server by its pid, and reap it."""
    pid = nats.pid()
    assert pid is not None, "the test's nats-server is not running"
    os.kill(pid, signal.SIGKILL)
    nats.stop()  # reaps the killed child; nothing else runs on its store


async def outcome(call: Callable[[], Awaitable[Any]]) -> tuple[str, str, float]:
    """(status code name, details, seconds) of one call."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(SILENCE):
            await call()
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or "", time.monotonic() - started
    except TimeoutError:
        return "SILENT", f"no answer in {SILENCE:g}s", time.monotonic() - started
    return "OK", "", time.monotonic() - started


def calls(stub: events_pb2_grpc.EventServiceStub, subject: str) -> dict[str, Any]:
    """Every RPC of the service, each made once."""
    flt = events_pb2.EventFilter(subject=subject)

    async def stream() -> None:
        call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt, from_beginning=True))
        try:
            async for _ in call:
                pass
        finally:
            call.cancel()

    async def batched_stream() -> None:
        request = events_pb2.StreamEventsRequest(filter=flt, max_events_per_message=256)
        call = stub.StreamEvents(request)
        try:
            await call.initial_metadata()
            async for _ in call:
                pass
        finally:
            call.cancel()

    return {
        "StreamEvents": stream,
        "StreamEvents (batched, headers awaited)": batched_stream,
        "PublishEvent": lambda: stub.PublishEvent(
            events_pb2.PublishEventRequest(event=event("test.down", subject))
        ),
        "PublishEvents": lambda: stub.PublishEvents(
            events_pb2.PublishEventsRequest(events=[event("test.down", subject)] * 3)
        ),
        "ListEvents": lambda: stub.ListEvents(events_pb2.ListEventsRequest(filter=flt)),
        "GetEvent": lambda: stub.GetEvent(events_pb2.GetEventRequest(name="events/1")),
    }


async def test_nats_down_every_call_is_unavailable_naming_nats_and_open_streams_carry_on(
    on_private_nats: RunningEvents, private_nats: EmbeddedNats, resource: str, janitor: Janitor
) -> None:
    running = on_private_nats
    stub = running.stub
    flt = events_pb2.EventFilter(subject=resource, types=["test.tick"])
    first = await publish(stub, "test.tick", resource, n=0)
    # Open before the outage, and kept open through every one of them.
    open_call = stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=flt, after_sequence=first.sequence - 1)
    )
    seen: list[int] = []

    async def read_open() -> None:
        async for item in open_call:
            seen.append(item.event.sequence)

    reader = janitor.task(read_open())
    published = [first.sequence]

    async def caught_up() -> bool:
        return len(seen) >= len(published)

    await wait_until(caught_up, timeout=SILENCE)
    for round_ in range(2):  # down and back twice: the same answers each time
        await asyncio.to_thread(kill, private_nats)
        each = calls(stub, resource)
        results = await asyncio.gather(*(outcome(call) for call in each.values()))
        outcomes = dict(zip(each, results, strict=True))
        print(f"\nNATS killed, round {round_}:")
        for rpc, (code, details, seconds) in outcomes.items():
            print(f"  {rpc}: {code} after {seconds:.1f}s: {details}")
        wrong = {
            rpc: (code, details)
            for rpc, (code, details, _) in outcomes.items()
            if code != "UNAVAILABLE"
            or not details.startswith(f"events: NATS at {private_nats.url} is unreachable: ")
        }
        assert wrong == {}, wrong
        streams = [outcomes[rpc][1] for rpc in outcomes if rpc.startswith("StreamEvents")]
        assert all("the stream was not opened" in d for d in streams), streams
        # Down longer than the open stream takes to notice (no heartbeat for ~3 s): its reader
        # tries to make a new consumer while NATS is still away, past the 1 s bound.
        await asyncio.sleep(3.0)

        await asyncio.to_thread(private_nats.start)
        for n in range(3):
            published.append((await publish(stub, "test.tick", resource, n=n)).sequence)
        await wait_until(caught_up, timeout=SILENCE)
        assert seen == published, "the open stream: every event once, in order, across outages"
        await works_again(stub, flt, published)
    assert not reader.done(), "the open stream stayed open"
    servicer = running.svc.servicer
    assert servicer is not None
    assert max(r.resets for r in servicer.readers) >= 2, "it made a new consumer each time"
    open_call.cancel()


async def works_again(
    stub: events_pb2_grpc.EventServiceStub, flt: events_pb2.EventFilter, published: list[int]
) -> None:
    """With NATS back, a new stream, a page, one event and a batch all work."""
    call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt, from_beginning=True))
    received = [e.sequence for e in await collect(call, len(published), timeout=SILENCE)]
    call.cancel()
    assert received == published
    page = await stub.ListEvents(events_pb2.ListEventsRequest(filter=flt))
    assert [e.sequence for e in page.events] == published
    got = await stub.GetEvent(events_pb2.GetEventRequest(name=f"events/{published[-1]}"))
    assert got.event.sequence == published[-1]
    batch = [event("test.back", flt.subject) for _ in range(2)]
    stored = await stub.PublishEvents(events_pb2.PublishEventsRequest(events=batch))
    assert [e.sequence > 0 for e in stored.events] == [True, True]
