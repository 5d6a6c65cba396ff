"""A resume point beyond the log's end is refused (OUT_OF_RANGE naming the last sequence), not
waited for: a client whose saved sequence predates a wiped log would otherwise miss everything,
silently, until the new log reached its number."""

from __future__ import annotations

import re

import grpc
import pytest
from events_helpers import RunningEvents, collect, publish

from amelia.v1 import events_pb2


async def test_after_sequence_beyond_the_end_is_out_of_range(
    events: RunningEvents, resource: str
) -> None:
    stored = await publish(events.stub, "tests.range", resource, n=1)
    flt = events_pb2.EventFilter(subject=resource)
    beyond = stored.sequence + 10_000_000

    call = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=flt, after_sequence=beyond)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(call, 1)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    # A status the service sent carries its request id (the gateway tells it from gRPC's own).
    assert any(key == "x-request-id" for key, _ in info.value.trailing_metadata() or ())
    message = info.value.details() or ""
    assert f"after_sequence {beyond} is beyond the end of the event log" in message, message
    found = re.search(r"its last sequence is (\d+)", message)
    assert found is not None, message
    last = int(found.group(1))
    assert stored.sequence <= last < beyond

    # The last sequence a client saw is a valid resume point: the stream opens and follows.
    call = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=flt, after_sequence=stored.sequence)
    )
    await call.initial_metadata()
    following = await publish(events.stub, "tests.range", resource, n=2)
    assert [e.sequence for e in await collect(call, 1)] == [following.sequence]
    call.cancel()

    # Before it, the replay starts where asked.
    call = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(filter=flt, after_sequence=stored.sequence - 1)
    )
    got = await collect(call, 2)
    call.cancel()
    assert [e.sequence for e in got] == [stored.sequence, following.sequence]
