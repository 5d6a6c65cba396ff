"""Hostile input to the event log: refused with a clear status, nothing stored, the log readable.

- data a JSON reader cannot take (NaN, Infinity, NUL) and impossible times are refused;
- a message in the stream that is not a readable event never makes the log unreadable;
- a client can neither squat the id of an event the mesh emits nor forge the mesh's types;
- start positions outside what JetStream represents never replay the whole log.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from agents_helpers import collect as collect_run
from agents_helpers import create_run, serve_agents, wait_status
from events_helpers import RunningEvents, collect, event, list_all, publish, wait_until
from google.protobuf import json_format

from amelia.v1 import agents_pb2, events_pb2
from amelia_common.eventlog import (
    MAX_SEQUENCE,
    UNDECODABLE_TYPE,
    StartAt,
    decode_event,
    event_data,
    filter_subjects,
)
from amelia_common.settings import Settings
from amelia_events import pagination

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def status_of(awaitable: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def stored(events: RunningEvents, subject: str) -> list[events_pb2.Event]:
    return await list_all(events.stub, events_pb2.EventFilter(subject=subject))


def as_json(ev: events_pb2.Event) -> str:
    """What the gateway does with every event it forwards."""
    return json_format.MessageToJson(ev)


# --------------------------------------------------------------------------- content


def _nan_event(resource: str, **data: Any) -> events_pb2.Event:
    ev = event("test.hostile", resource)
    ev.data.update(data)
    return ev


@pytest.mark.parametrize(
    ("data", "word"),
    [
        ({"a": math.nan}, "NaN"),
        ({"a": math.inf}, "Infinity"),
        ({"a": -math.inf}, "Infinity"),
        ({"deep": {"list": [1, {"x": math.nan}]}}, "NaN"),
        ({"text": "a\x00b"}, "NUL"),
        ({"key\x00": 1}, "NUL"),
    ],
)
async def test_data_a_json_reader_cannot_take_is_refused_and_not_stored(
    events: RunningEvents, resource: str, data: dict[str, Any], word: str
) -> None:
    code, details = await status_of(
        events.stub.PublishEvent(events_pb2.PublishEventRequest(event=_nan_event(resource, **data)))
    )
    assert code == INVALID, details
    assert "data" in details and word in details
    assert await stored(events, resource) == []


async def test_bad_envelope_text_and_times_are_refused(
    events: RunningEvents, resource: str
) -> None:
    nul_source = event("test.hostile", resource)
    nul_source.source = "me\x00"
    nul_correlation = event("test.hostile", resource)
    nul_correlation.correlation_id = "c\x00"
    far_time = event("test.hostile", resource)
    far_time.time.seconds = 10**13  # after 9999-12-31
    bad_nanos = event("test.hostile", resource)
    bad_nanos.time.nanos = -1
    for ev, words in (
        (nul_source, ("source", "NUL")),
        (nul_correlation, ("correlation_id", "NUL")),
        (far_time, ("time", "timestamp")),
        (bad_nanos, ("time", "timestamp")),
    ):
        code, details = await status_of(
            events.stub.PublishEvent(events_pb2.PublishEventRequest(event=ev))
        )
        assert code == INVALID and all(w in details for w in words), details
    assert await stored(events, resource) == []


async def test_unreadable_messages_in_the_stream_never_make_the_log_unreadable(
    events: RunningEvents, resource: str
) -> None:
    """Messages written by another tool or an older version (garbage bytes, NaN data, a time
    out of range) come back as `system.undecodable` placeholders at their sequence; every reader
    (ListEvents, StreamEvents, GetEvent, the library) keeps going past them."""
    first = await publish(events.stub, "test.before", resource, n=1)
    collection, ident = resource.split("/")
    js = events.log.nc.jetstream()
    nan = _nan_event(resource, a=math.nan)
    nan.id, nan.type = "old-nan", "test.nan"
    nan.time.GetCurrentTime()
    far = event("test.far", resource)
    far.id = "old-far"
    far.time.seconds = 10**13
    raw = {
        "test.garbage": b"\xff\xfe not a protobuf \x00\x01",
        "test.nan": nan.SerializeToString(),
        "test.far": far.SerializeToString(),
    }
    sequences = {}
    for event_type, payload in raw.items():
        ack = await js.publish(f"amelia.events.{collection}.{ident}.{event_type}", payload)
        sequences[event_type] = ack.seq
    last = await publish(events.stub, "test.after", resource, n=2)

    listed = await stored(events, resource)
    assert [e.sequence for e in listed] == [first.sequence, *sequences.values(), last.sequence]
    assert [e.type for e in listed] == ["test.before", *[UNDECODABLE_TYPE] * 3, "test.after"]
    for ev in listed:
        as_json(ev)  # every event converts to JSON
    placeholders = {event_data(e)["original_type"]: e for e in listed[1:4]}
    assert set(placeholders) == set(raw)
    assert placeholders["test.nan"].id == "old-nan"
    assert placeholders["test.garbage"].subject == resource
    assert "NaN" in event_data(placeholders["test.nan"])["reason"]

    streamed = await collect(
        events.stub.StreamEvents(
            events_pb2.StreamEventsRequest(
                filter=events_pb2.EventFilter(subject=resource), from_beginning=True
            )
        ),
        5,
    )
    assert [e.sequence for e in streamed] == [e.sequence for e in listed]

    for sequence in sequences.values():
        got = await events.stub.GetEvent(events_pb2.GetEventRequest(name=f"events/{sequence}"))
        assert got.event.type == UNDECODABLE_TYPE
        as_json(got.event)

    async with events.log.read([], resource, StartAt.beginning(), follow=False) as reader:
        assert [e.sequence async for e in reader] == [e.sequence for e in listed]


def test_an_event_found_readable_once_is_not_trusted_for_other_bytes_at_its_sequence() -> None:
    """Readers share the check of an event read back (one check for 100 subscribers of a run),
    by sequence and bytes: a stream recreated under the same name reuses its sequences, and a
    NaN stored there must still come back as a placeholder, never as the event checked before."""
    good = event("test.good", "tests/recreated", n=1)
    good.time.GetCurrentTime()
    bad = _nan_event("tests/recreated", a=math.nan)
    bad.time.GetCurrentTime()
    sequence = MAX_SEQUENCE - 7  # a sequence no stream of the session reaches
    for _ in range(2):  # the second time, the good bytes are known
        assert decode_event(good.SerializeToString(), sequence).type == "test.good"
        assert decode_event(bad.SerializeToString(), sequence).type == UNDECODABLE_TYPE
    assert decode_event(bytes(good.SerializeToString()), sequence).sequence == sequence


# --------------------------------------------------------------------------- ids and types


@pytest.mark.parametrize(
    "event_type",
    ["run.completed", "run.node.started", "agent.started", "workflow.progress", "document.indexed"],
)
async def test_a_client_cannot_publish_the_mesh_types(
    events: RunningEvents, resource: str, event_type: str
) -> None:
    code, details = await status_of(
        events.stub.PublishEvent(events_pb2.PublishEventRequest(event=event(event_type, resource)))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert event_type in details and "run.*" in details
    assert await stored(events, resource) == []
    # Other families stay open to clients (the README publishes system.warning).
    for allowed in ("system.warning", f"app.{event_type}"):
        await publish(events.stub, allowed, resource)
    assert len(await stored(events, resource)) == 2


async def test_a_client_id_never_deduplicates_a_service_event(
    events: RunningEvents, resource: str
) -> None:
    """Client ids live in their own dedup namespace: the same id from a client and from a
    service are two events; a client retrying its own id is still stored once."""
    squat = event("app.note", resource)
    squat.id = "shared-id:end"
    client = (await events.stub.PublishEvent(events_pb2.PublishEventRequest(event=squat))).event
    again = (await events.stub.PublishEvent(events_pb2.PublishEventRequest(event=squat))).event
    assert again.sequence == client.sequence
    service = await events.log.publish("test.completed", resource, event_id="shared-id:end")
    assert service.sequence > client.sequence
    assert [e.type for e in await stored(events, resource)] == ["app.note", "test.completed"]


async def test_a_squatted_run_end_id_does_not_stop_the_run_completing(
    events: RunningEvents, settings: Settings
) -> None:
    """The attack of the issue, end to end: the run's ids published first by a client."""
    settings = settings.model_copy(update={"EVENTS_ADDRESS": events.address})
    queued_only = settings.model_copy(update={"AGENT_WORKERS": 0})
    async with serve_agents(queued_only) as agents:
        thread = (await agents.CreateThread(agents_pb2.CreateThreadRequest())).thread.name
        run = await create_run(
            agents, workflow="workflows/echo", thread=thread, input={"message": "hi"}
        )
        run_id = run.name.split("/", 1)[1]
        for suffix in ("end", "started", "lifecycle-end"):
            squat = event("app.squat", run.name)
            squat.id = f"{run_id}:{suffix}"
            await events.stub.PublishEvent(events_pb2.PublishEventRequest(event=squat))
    async with serve_agents(settings.model_copy(update={"AGENT_WORKERS": 1})) as agents:
        await wait_status(agents, run.name, agents_pb2.RUN_STATUS_COMPLETED, timeout=120)
        history = await collect_run(agents, run.name)  # ends with the run's terminal event
    mesh = {e.type: e.id for e in history if not e.type.startswith("app.")}
    assert mesh["workflow.started"] == f"{run_id}:started"
    assert mesh["workflow.completed"] == f"{run_id}:lifecycle-end"
    assert mesh["run.completed"] == f"{run_id}:end"
    assert history[-1].type == "run.completed"


# --------------------------------------------------------------------------- ranges


def _at(seconds: int) -> dict[str, Any]:
    request = events_pb2.ListEventsRequest()
    request.start_time.seconds = seconds
    return {"start_time": request.start_time}


YEAR_2300 = 10_413_792_000  # 2300-01-01, past JetStream's int64 nanoseconds (2262-04-11)
YEAR_9999 = 253402300799  # the last second a Timestamp can hold
YEAR_1000 = -30610224000  # before 1678, the other end of int64 nanoseconds
YEAR_0001 = -62135596800


async def test_start_times_past_2262_match_nothing_and_before_1678_everything(
    events: RunningEvents, resource: str
) -> None:
    flt = events_pb2.EventFilter(subject=resource)
    published = [await publish(events.stub, "test.step", resource, i=i) for i in range(3)]
    ids = [e.id for e in published]
    for seconds in (YEAR_2300, YEAR_9999):
        assert await list_all(events.stub, flt, **_at(seconds)) == []
    for seconds in (YEAR_1000, YEAR_0001):
        assert [e.id for e in await list_all(events.stub, flt, **_at(seconds))] == ids

    # A stream from 2300 reads what arrives and gives none of it: it was stored before 2300.
    request = events_pb2.StreamEventsRequest(filter=flt)
    request.start_time.seconds = YEAR_2300
    call = events.stub.StreamEvents(request)
    await call.initial_metadata()
    servicer = events.svc.servicer
    assert servicer is not None
    dotted = resource.replace("/", ".")

    async def reader_open() -> bool:
        return any(r.consumer_name and dotted in r.filters[0] for r in servicer.readers)

    await wait_until(reader_open)
    (reader,) = [r for r in servicer.readers if dotted in r.filters[0]]
    live = await publish(events.stub, "test.step", resource, i=3)

    async def read_past_it() -> bool:
        return reader.last_sequence >= live.sequence

    await wait_until(read_past_it)
    assert reader.delivered == 0
    call.cancel()


async def test_out_of_range_positions_are_invalid_argument_or_nothing(
    events: RunningEvents, resource: str
) -> None:
    stub = events.stub
    flt = events_pb2.EventFilter(subject=resource)
    await publish(stub, "test.step", resource)
    for sequence in (MAX_SEQUENCE + 1, 2**64 - 1):
        code, details = await status_of(
            stub.ListEvents(events_pb2.ListEventsRequest(filter=flt, after_sequence=sequence))
        )
        assert code == INVALID and "after_sequence" in details, details
        call = stub.StreamEvents(
            events_pb2.StreamEventsRequest(filter=flt, after_sequence=sequence)
        )
        code, details = await status_of(collect(call, 1))
        assert code == INVALID and "after_sequence" in details, details
    assert await list_all(stub, flt, after_sequence=MAX_SEQUENCE) == []

    forged = pagination.encode_token(2**64 + 5, filter_subjects([], resource))
    code, details = await status_of(
        stub.ListEvents(events_pb2.ListEventsRequest(filter=flt, page_token=forged))
    )
    assert code == INVALID, details

    bad_time = events_pb2.StreamEventsRequest(filter=flt)
    bad_time.start_time.seconds = 10**13
    code, details = await status_of(collect(stub.StreamEvents(bad_time), 1))
    assert code == INVALID and "start_time" in details, details
    code, details = await status_of(
        stub.ListEvents(events_pb2.ListEventsRequest(filter=flt, **_at(10**13)))
    )
    assert code == INVALID and "start_time" in details, details

    for sequence in (MAX_SEQUENCE + 1, 2**64 - 1):  # a sequence the log may hold one day
        code, details = await status_of(
            stub.GetEvent(events_pb2.GetEventRequest(name=f"events/{sequence}"))
        )
        assert code == grpc.StatusCode.NOT_FOUND, details
    for sequence in (2**64, 10**20 - 1):  # no sequence at all (a uint64 is below 2**64)
        code, details = await status_of(
            stub.GetEvent(events_pb2.GetEventRequest(name=f"events/{sequence}"))
        )
        assert code == INVALID and "18446744073709551615" in details, details
