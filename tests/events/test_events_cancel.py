"""A cancelled read ends, whenever the cancellation comes: its reader and JetStream consumer go.

A reader that outlives its call holds a consumer per dead subscriber (the gateway's 200-socket
test saw one left 20 s after its call was cancelled): a cancellation arriving just as a message
(a NATS heartbeat, once a second) reached the reader was swallowed by Python 3.11's
`asyncio.wait_for`, and the cancelled read waited on until the service stopped.
"""

from __future__ import annotations

import asyncio
import uuid

from events_helpers import RunningEvents, consumers_matching, wait_until

from amelia.v1 import events_pb2
from amelia_common.eventlog import EventReader, StartAt

# Loop iterations after a heartbeat lands in the reader's queue at which the cancellation comes:
# together they cover the moment the queue's get has finished and its waiter is not yet woken.
CANCEL_DELAYS = range(6)


async def test_a_read_cancelled_as_a_heartbeat_arrives_ends_and_drops_its_consumer(
    events: RunningEvents, resource: str
) -> None:
    js = events.log.js
    stream = events.log.settings.EVENTS_STREAM
    token = resource.split("/")[1]
    for delay in CANCEL_DELAYS:
        async with events.log.read([], resource, StartAt.new(), heartbeat=0.2) as reader:
            await reader.open()
            read = asyncio.create_task(anext(reader))
            # The next heartbeat from NATS is in the queue (and not yet taken) ...
            async with asyncio.timeout(20):
                while not reader.buffered:  # noqa: ASYNC110 - watching for one loop iteration
                    await asyncio.sleep(0)
            for _ in range(delay):  # ... and the cancellation comes `delay` iterations later.
                await asyncio.sleep(0)
            read.cancel()
            done, _ = await asyncio.wait({read}, timeout=20)
            assert done and read.cancelled(), f"a read cancelled {delay} iterations late went on"
    await wait_until(lambda: _no_consumer(events, token))
    assert not await consumers_matching(js, stream, token)


async def _no_consumer(events: RunningEvents, token: str) -> bool:
    stream = events.log.settings.EVENTS_STREAM
    return not await consumers_matching(events.log.js, stream, token)


async def test_a_batched_stream_cancelled_anywhere_leaves_no_reader_and_no_consumer(
    events: RunningEvents, resource: str
) -> None:
    """Cancelled while waiting for events, while its batches are being sent, and while a
    client that stopped reading holds up the send (HTTP/2 flow control)."""
    servicer = events.svc.servicer
    assert servicer is not None
    flt = events_pb2.EventFilter(subject=resource)
    blob = "x" * 8_000
    batch = [
        events_pb2.Event(type="test.big", subject=resource, id=f"c-{uuid.uuid4().hex}")
        for _ in range(500)
    ]
    for ev in batch:
        ev.data.update({"blob": blob})
    await events.stub.PublishEvents(events_pb2.PublishEventsRequest(events=batch))
    only_new = events_pb2.StreamEventsRequest(filter=flt, max_events_per_message=256)
    history = events_pb2.StreamEventsRequest(
        filter=flt, max_events_per_message=256, from_beginning=True
    )
    waiting = events.stub.StreamEvents(only_new)  # nothing new comes: it waits
    sending = events.stub.StreamEvents(history)  # ~4 MB to send; one message read
    stalled = events.stub.StreamEvents(history)  # ~4 MB to send; never read
    for call in (waiting, sending, stalled):
        await call.initial_metadata()
    await anext(aiter(sending))
    dotted = resource.replace("/", ".")

    def readers() -> list[EventReader]:
        return [r for r in servicer.readers if dotted in r.filters[0]]

    async def history_being_sent() -> bool:
        replaying = [r for r in readers() if r.start.from_beginning]
        return len(readers()) == 3 and all(r.delivered for r in replaying)

    await wait_until(history_being_sent)
    for call in (waiting, sending, stalled):
        call.cancel()

    async def all_gone() -> bool:
        return not readers() and await _no_consumer(events, resource.split("/")[1])

    await wait_until(all_gone)
