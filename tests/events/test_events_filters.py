"""Filters by type pattern and subject return exactly the matching events, live and from history."""

from __future__ import annotations

import uuid

import pytest
from events_helpers import RunningEvents, collect, list_all, publish

from amelia.v1 import events_pb2

TYPES = [
    "run.token",
    "run.node.started",
    "run.completed",
    "agent.started",
    "agent.failed",
    "document.indexed",
    "workflow.progress",
]


def type_matches(event_type: str, pattern: str) -> bool:
    """The documented rule, written independently of the service: `*` is one token, a trailing
    `*` or `>` matches all remaining tokens."""
    tokens, parts = event_type.split("."), pattern.split(".")
    for i, part in enumerate(parts):
        if i == len(parts) - 1 and part in ("*", ">"):
            return len(tokens) > i
        if i >= len(tokens) or (part != "*" and part != tokens[i]):
            return False
    return len(tokens) == len(parts)


def matches(event: events_pb2.Event, types: list[str], subject: str) -> bool:
    if subject:
        collection, ident = subject.split("/")
        ev_collection, ev_ident = event.subject.split("/") if event.subject else ("", "")
        if ev_collection != collection or ident not in ("*", ev_ident):
            return False
    return not types or any(type_matches(event.type, p) for p in types)


@pytest.fixture
def collections() -> tuple[str, str]:
    return f"f{uuid.uuid4().hex[:10]}", f"g{uuid.uuid4().hex[:10]}"


def cases(f: str, g: str) -> list[tuple[list[str], str]]:
    return [
        (["run.*"], f"{f}/*"),
        (["run.token", "agent.started"], f"{f}/a"),
        (["*.started"], f"{f}/*"),
        (["*.*.started"], f"{f}/*"),
        (["run.node.*"], f"{f}/b"),
        ([], f"{g}/a"),
        (["run.*", "run.token"], f"{f}/*"),  # overlapping patterns: still each event once
        ([">"], f"{f}/a"),
        (["agent.>", "document.indexed"], f"{g}/*"),
        (["workflow.progress"], ""),  # every subject (checked within this test's collections)
    ]


async def test_filters_exact_live_and_from_history(
    events: RunningEvents, collections: tuple[str, str]
) -> None:
    f, g = collections
    stub = events.stub
    marker = await publish(stub, "test.marker", f"{f}/marker")
    filters = cases(f, g)
    live = [
        stub.StreamEvents(
            events_pb2.StreamEventsRequest(
                filter=events_pb2.EventFilter(types=types, subject=subject),
                after_sequence=marker.sequence,
            )
        )
        for types, subject in filters
    ]

    published = []
    for round_ in range(2):
        for subject in (f"{f}/a", f"{f}/b", f"{g}/a", f"{g}/b"):
            for event_type in TYPES:
                # The mesh's own types: published as the services do, through the library.
                published.append(await events.log.publish(event_type, subject, {"round": round_}))
    ours = {e.id for e in published}

    for (types, subject), call in zip(filters, live, strict=True):
        expected = [e.id for e in published if matches(e, types, subject)]
        assert expected, f"case {types} {subject} should match something"
        flt = events_pb2.EventFilter(types=types, subject=subject)
        if subject:
            got_live = [e.id for e in await collect(call, len(expected))]
            history = await list_all(stub, flt, page_size=3, after_sequence=marker.sequence)
            got_history = [e.id for e in history]
        else:  # unscoped: other tests' events may match too; look at ours only
            got_live = []
            async for item in call:
                if item.event.id in ours:
                    got_live.append(item.event.id)
                if len(got_live) == len(expected):
                    break
            history = await list_all(stub, flt, page_size=50, after_sequence=marker.sequence)
            got_history = [e.id for e in history if e.id in ours]
        call.cancel()
        assert got_live == expected, f"live {types} {subject}"
        assert got_history == expected, f"history {types} {subject}"

        replay = stub.StreamEvents(
            events_pb2.StreamEventsRequest(filter=flt, after_sequence=marker.sequence)
        )
        if subject:
            assert [e.id for e in await collect(replay, len(expected))] == expected
        replay.cancel()
