"""Large events read back by any gRPC client: StreamEvents messages and ListEvents pages stay
under the 4 MiB a client with default options accepts (grpcio, grpc-js, grpcurl).

Counted in events alone, a replay of a few hundred-kilobyte events asking for many events per
message (as the gateway does) made one message too large to receive, and the same message again
at every reconnect: those events could never be read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from events_helpers import RunningEvents, event, list_all

from amelia.v1 import events_pb2, events_pb2_grpc

COUNT = 16
BLOB = "x" * 300_000  # 16 of them: 4.8 MB, more than one default client message


@pytest.fixture
async def default_client(events: RunningEvents) -> AsyncIterator[events_pb2_grpc.EventServiceStub]:
    """A client with gRPC's default limits, as a user's generated client has."""
    async with grpc.aio.insecure_channel(events.address) as channel:
        yield events_pb2_grpc.EventServiceStub(channel)


async def _publish_large(events: RunningEvents, subject: str) -> list[int]:
    sequences = []
    for n in range(COUNT):
        reply = await events.stub.PublishEvent(
            events_pb2.PublishEventRequest(event=event("test.large", subject, n=n, blob=BLOB))
        )
        sequences.append(reply.event.sequence)
    return sequences


async def test_a_batched_replay_of_large_events_reaches_a_default_client(
    events: RunningEvents, default_client: events_pb2_grpc.EventServiceStub, resource: str
) -> None:
    sequences = await _publish_large(events, resource)
    call = default_client.StreamEvents(
        events_pb2.StreamEventsRequest(
            filter=events_pb2.EventFilter(subject=resource),
            from_beginning=True,
            max_events_per_message=1000,
        )
    )
    seen: list[int] = []
    messages = 0
    async for response in call:
        messages += 1
        seen.extend(e.sequence for e in response.events)
        assert all(e.data.fields["blob"].string_value == BLOB for e in response.events)
        if len(seen) >= COUNT:
            call.cancel()
            break
    assert seen == sequences
    assert messages > 1


async def test_a_large_page_of_large_events_is_cut_short_with_a_token(
    events: RunningEvents, default_client: events_pb2_grpc.EventServiceStub, resource: str
) -> None:
    sequences = await _publish_large(events, resource)
    first = await default_client.ListEvents(
        events_pb2.ListEventsRequest(
            filter=events_pb2.EventFilter(subject=resource), page_size=1000
        )
    )
    assert 0 < len(first.events) < COUNT and first.next_page_token
    stored = await list_all(default_client, events_pb2.EventFilter(subject=resource), 1000)
    assert [e.sequence for e in stored] == sequences
