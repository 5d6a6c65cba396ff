"""StreamEvents heartbeats (`heartbeat_seconds`): an open stream is never silent, during a quiet
log or a NATS outage, and tells which; after the outage it carries on gap-free. A stream that
did not ask for them (an older client) gets events only, as before."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from events_helpers import Janitor, RunningEvents, publish

from amelia.v1 import events_pb2
from amelia_common.embedded import EmbeddedNats

# A hang guard only (no speed is asserted).
SILENCE = 60.0


async def _next(call: grpc.aio.UnaryStreamCall) -> events_pb2.StreamEventsResponse:
    async with asyncio.timeout(SILENCE):
        message: events_pb2.StreamEventsResponse = await call.read()
    assert message is not grpc.aio.EOF, "the stream ended"
    return message


async def _heartbeat(
    call: grpc.aio.UnaryStreamCall, reachable: bool, events: list[int]
) -> events_pb2.StreamHeartbeat:
    """The next heartbeat saying `reachable`; the events before it are added to `events`, and
    every message is one or the other, never both."""
    while True:
        message = await _next(call)
        if message.HasField("heartbeat"):
            assert not message.HasField("event") and not message.events, message
            if message.heartbeat.log_reachable == reachable:
                return message.heartbeat
        else:
            events.append(message.event.sequence)


async def test_heartbeats_tell_a_quiet_log_from_a_nats_outage_and_the_stream_carries_on(
    on_private_nats: RunningEvents, private_nats: EmbeddedNats, resource: str, janitor: Janitor
) -> None:
    stub = on_private_nats.stub
    flt = events_pb2.EventFilter(subject=resource)
    first = (await publish(stub, "test.tick", resource)).sequence
    start = {"filter": flt, "after_sequence": first - 1}
    call = stub.StreamEvents(events_pb2.StreamEventsRequest(**start, heartbeat_seconds=1))
    old_client = stub.StreamEvents(events_pb2.StreamEventsRequest(**start))
    seen: list[int] = []

    quiet = await _heartbeat(call, True, seen)
    while not seen:  # (a busy machine may beat before the first event is read)
        quiet = await _heartbeat(call, True, seen)
    assert seen == [first]
    assert (quiet.last_sequence, quiet.status) == (first, "")
    assert quiet.time.seconds > 0

    for _ in range(2):  # down and back twice
        await asyncio.to_thread(private_nats.stop)
        down = await _heartbeat(call, False, seen)
        assert down.last_sequence == seen[-1]
        assert down.status.startswith(f"events: NATS at {private_nats.url} "), down.status
        assert f"carries on after sequence {seen[-1]} once it is back" in down.status

        await asyncio.to_thread(private_nats.start)
        await _heartbeat(call, True, seen)  # the service reads the log again
        published = [(await publish(stub, "test.tick", resource)).sequence for _ in range(3)]
        expected = [*seen, *published]
        back = await _heartbeat(call, True, seen)
        while len(seen) < len(expected):
            back = await _heartbeat(call, True, seen)
        assert seen == expected, "every event once, in order, across the outage"
        assert back.last_sequence == seen[-1]

    # The stream without heartbeats: the same events, and nothing else.
    for sequence in seen:
        message = await _next(old_client)
        assert not message.HasField("heartbeat")
        assert message.event.sequence == sequence
    call.cancel()
    old_client.cancel()


async def test_heartbeats_in_batched_messages_too(
    on_private_nats: RunningEvents, resource: str
) -> None:
    stub = on_private_nats.stub
    first = (await publish(stub, "test.tick", resource)).sequence
    request = events_pb2.StreamEventsRequest(
        filter=events_pb2.EventFilter(subject=resource),
        from_beginning=True,
        max_events_per_message=100,
        heartbeat_seconds=1,
    )
    call = stub.StreamEvents(request)
    message = await _next(call)
    while message.HasField("heartbeat"):  # (a busy machine may beat before the first event)
        message = await _next(call)
    assert [e.sequence for e in message.events] == [first]
    beat = (await _next(call)).heartbeat
    assert beat.log_reachable and beat.last_sequence == first
    call.cancel()


async def test_a_quiet_stream_from_now_resumes_from_where_it_started_not_from_the_beginning(
    on_private_nats: RunningEvents, resource: str
) -> None:
    """QA s27 F7: a stream "from now" on a filter nothing matched yet beat `last_sequence` 0,
    the documented point to resume from, and `after_sequence=0` replays the whole log. It beats
    the log's last sequence when it opened, and resuming there gives only what came after."""
    stub = on_private_nats.stub
    flt = events_pb2.EventFilter(subject=resource)
    before = (await publish(stub, "test.tick", resource)).sequence
    call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt, heartbeat_seconds=1))
    seen: list[int] = []
    beat = await _heartbeat(call, True, seen)
    assert seen == [] and beat.last_sequence >= before, beat
    call.cancel()

    after = (await publish(stub, "test.tick", resource)).sequence
    resumed = stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=flt, after_sequence=beat.last_sequence)
    )
    assert (await _next(resumed)).event.sequence == after  # not `before`, sent before it opened
    resumed.cancel()


@pytest.mark.parametrize("seconds", [3601, 2**32 - 1])
async def test_a_heartbeat_interval_past_an_hour_is_refused(
    on_private_nats: RunningEvents, seconds: int
) -> None:
    call = on_private_nats.stub.StreamEvents(
        events_pb2.StreamEventsRequest(from_beginning=True, heartbeat_seconds=seconds)
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "heartbeat_seconds" in (refused.value.details() or "")
