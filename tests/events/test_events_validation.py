"""Bad input gets INVALID_ARGUMENT with a message saying what is wrong; missing gets NOT_FOUND."""

from __future__ import annotations

import base64

import grpc
import pytest
from events_helpers import RunningEvents, collect, event, publish

from amelia.v1 import events_pb2


async def expect_error(awaitable: object, code: grpc.StatusCode, *words: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    for word in words:
        assert word in details, f"{word!r} not in {details!r}"


@pytest.mark.parametrize(
    ("types", "subject", "words"),
    [
        (["Run.*"], "", ["Run.*", "lowercase"]),
        (["run..token"], "", ["run..token", "empty token"]),
        (["run.>.token"], "", ["'>' may only be the last token"]),
        (["run.tok en"], "", ["tok en"]),
        ([], "runs", ["'runs'", "collection/id"]),
        ([], "runs/a/b", ["collection/id"]),
        ([], "Runs/*", ["collection/id"]),
        # A run's uuid as a person may copy it (QA s19: matched nothing, silently).
        (
            [],
            "runs/4F1C0000-0000-4000-8000-0000000000AB",
            ["names no run", "'runs/4f1c0000-0000-4000-8000-0000000000ab'", "canonical"],
        ),
        ([], "threads/4f1c00000000400080000000000000ab", ["names no thread", "threads/4f1c0000-"]),
    ],
)
async def test_bad_filters(
    events: RunningEvents, types: list[str], subject: str, words: list[str]
) -> None:
    flt = events_pb2.EventFilter(types=types, subject=subject)
    call = events.stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt))
    await expect_error(collect(call, 1), grpc.StatusCode.INVALID_ARGUMENT, *words)
    await expect_error(
        events.stub.ListEvents(events_pb2.ListEventsRequest(filter=flt)),
        grpc.StatusCode.INVALID_ARGUMENT,
        *words,
    )


async def test_bad_pages(events: RunningEvents, resource: str) -> None:
    stub = events.stub
    flt = events_pb2.EventFilter(subject=resource)
    await expect_error(
        stub.ListEvents(events_pb2.ListEventsRequest(filter=flt, page_size=-5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size",
        "-5",
    )
    await expect_error(
        stub.ListEvents(events_pb2.ListEventsRequest(filter=flt, page_token="garbage!")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    for i in range(3):
        await publish(stub, "test.step", resource, i=i)
    page = await stub.ListEvents(events_pb2.ListEventsRequest(filter=flt, page_size=2))
    assert len(page.events) == 2 and page.next_page_token
    other = events_pb2.EventFilter(subject=resource, types=["test.other"])
    await expect_error(
        stub.ListEvents(
            events_pb2.ListEventsRequest(filter=other, page_token=page.next_page_token)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "different filter",
    )
    # A real token cut short keeps its version and position but not its filter's fingerprint:
    # it is not one of ours (QA s26 saw "issued for a different filter" for it).
    raw = base64.urlsafe_b64decode(page.next_page_token + "==")
    cut = base64.urlsafe_b64encode(raw[:-13] + b"\0\0\0").decode().rstrip("=")
    await expect_error(
        stub.ListEvents(events_pb2.ListEventsRequest(filter=flt, page_token=cut)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a token returned by ListEvents",
    )
    last = await stub.ListEvents(
        events_pb2.ListEventsRequest(filter=flt, page_size=2, page_token=page.next_page_token)
    )
    assert len(last.events) == 1 and not last.next_page_token


async def test_bad_event_names(events: RunningEvents) -> None:
    for name in ("events/abc", "events/0", "events/-3", "runs/1", "", "events/1/2"):
        await expect_error(
            events.stub.GetEvent(events_pb2.GetEventRequest(name=name)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "events/{sequence}",
        )
    await expect_error(
        events.stub.GetEvent(events_pb2.GetEventRequest(name="events/999999999999")),
        grpc.StatusCode.NOT_FOUND,
        "events/999999999999",
    )


async def test_bad_events(events: RunningEvents, resource: str) -> None:
    stub = events.stub

    async def publish_raw(ev: events_pb2.Event | None) -> None:
        request = events_pb2.PublishEventRequest()
        if ev is not None:
            request.event.CopyFrom(ev)
        await stub.PublishEvent(request)

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect_error(publish_raw(None), invalid, "event is required")
    await expect_error(publish_raw(event("Bad.Type", resource)), invalid, "'Bad.Type'")
    await expect_error(publish_raw(event("single", resource)), invalid, "'single'", "run.token")
    await expect_error(publish_raw(event("run.token", "nope")), invalid, "'nope'", "collection/id")
    await expect_error(publish_raw(event("run.token", "runs/*")), invalid, "'runs/*'")
    upper = "documents/4F1C0000-0000-4000-8000-0000000000AB"
    await expect_error(publish_raw(event("run.token", upper)), invalid, "names no document")
    with_bad_id = event("run.token", resource)
    with_bad_id.id = "has space"
    await expect_error(publish_raw(with_bad_id), invalid, "'has space'")
    big = event("run.token", resource, blob="x" * 600_000)
    await expect_error(publish_raw(big), invalid, "bytes", "EVENTS_MAX_DATA_BYTES")
    # Nothing of the above reached the log.
    page = await stub.ListEvents(
        events_pb2.ListEventsRequest(filter=events_pb2.EventFilter(subject=resource))
    )
    assert list(page.events) == []


async def test_publish_with_same_id_is_stored_once(events: RunningEvents, resource: str) -> None:
    ev = event("test.step", resource, n=1)
    ev.id = "retry-me-1"
    first = await events.stub.PublishEvent(events_pb2.PublishEventRequest(event=ev))
    again = await events.stub.PublishEvent(events_pb2.PublishEventRequest(event=ev))
    assert first.event.sequence == again.event.sequence
    page = await events.stub.ListEvents(
        events_pb2.ListEventsRequest(filter=events_pb2.EventFilter(subject=resource))
    )
    assert [e.id for e in page.events] == ["retry-me-1"]
    got = await events.stub.GetEvent(
        events_pb2.GetEventRequest(name=f"events/{first.event.sequence}")
    )
    assert got.event.id == "retry-me-1" and got.event.source  # source filled in
    assert got.event.time.seconds > 0  # time filled in
