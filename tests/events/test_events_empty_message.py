"""An empty message another NATS client stored on the stream reads as `system.undecodable`
everywhere, GetEvent and a PublishEvent reusing its id included (QA s26 F5).

ListEvents and StreamEvents already showed such a message as the placeholder, but GetEvent was
INTERNAL: JetStream's stored-message get hands an empty payload over as None, not b"", and
`decode_event` raised `TypeError: expected bytes, NoneType found`. A PublishEvent with the id
of such a message reads it back (`EventLog.stored_before`), so it was INTERNAL too, where a
garbage payload under the same circumstances is ALREADY_EXISTS.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from events_helpers import RunningEvents, event

from amelia.v1 import events_pb2
from amelia_common.eventlog import UNDECODABLE_TYPE, decode_event, event_data


def test_decode_event_takes_a_missing_payload_for_an_empty_one() -> None:
    placeholder = decode_event(None, 41, "amelia.events.tests.x.test.raw")
    assert placeholder.type == UNDECODABLE_TYPE
    assert placeholder.sequence == 41
    assert placeholder.subject == "tests/x"
    assert event_data(placeholder)["payload_bytes"] == 0
    assert decode_event(b"", 41, "amelia.events.tests.x.test.raw") == placeholder


@pytest.mark.parametrize("payload", [b"", b"\xff\x01garbage"], ids=["empty", "garbage"])
async def test_a_foreign_message_is_a_placeholder_for_get_event_and_its_id_already_exists(
    events: RunningEvents, payload: bytes
) -> None:
    ident = f"foreign{uuid.uuid4().hex[:12]}"
    js = events.log.nc.jetstream()
    ack = await js.publish(
        f"amelia.events.tests.{ident}.test.raw", payload, headers={"Nats-Msg-Id": f"client:{ident}"}
    )

    got = await events.stub.GetEvent(events_pb2.GetEventRequest(name=f"events/{ack.seq}"))
    assert got.event.type == UNDECODABLE_TYPE
    assert got.event.sequence == ack.seq
    assert got.event.subject == f"tests/{ident}"
    assert event_data(got.event)["payload_bytes"] == len(payload)
    listed = await events.stub.ListEvents(
        events_pb2.ListEventsRequest(filter=events_pb2.EventFilter(subject=f"tests/{ident}"))
    )
    assert list(listed.events) == [got.event]  # the same placeholder, every way in

    reused = event("test.raw", f"tests/{ident}")
    reused.id = ident
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await events.stub.PublishEvent(events_pb2.PublishEventRequest(event=reused))
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS, refused.value.details()
    assert f"already stored at sequence {ack.seq}" in (refused.value.details() or "")
