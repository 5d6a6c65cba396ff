"""`event_json` writes the very text `MessageToDict` + `json.dumps` (`to_json_text`) gives for an
Event, byte for byte, on events shaped as the mesh emits them and on hostile ones; what proto JSON
refuses still raises. Every socket message the gateway sends carries this text."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from amelia.v1 import events_pb2
from amelia_gateway.event_json import event_json
from amelia_gateway.transcode import to_json_text

RUN = "runs/0b9f8e7d6c5b4a39"
# (type, data) as the mesh's services emit them (agents, rag, workflows).
MESH_EVENTS: list[tuple[str, dict[str, Any] | None]] = [
    ("run.started", {"agent": "agents/a1", "workflow": "chat", "attempt": 1}),
    ("run.input", {"input": {"messages": [{"role": "user", "content": "Hi"}]}}),
    ("run.node.started", {"node": "draft", "step": 2}),
    ("run.token", {"node": "draft", "token": " wörld", "index": 17}),
    ("run.node.finished", {"node": "draft", "usage": {"input_tokens": 12, "output_tokens": 8}}),
    ("run.tool.called", {"tool": "pytest", "args": ["-q", "tests"], "cwd": ""}),
    ("run.tool.result", {"tool": "pytest", "exit": 1, "output": "1 failed\n\tE  assert 1 == 2"}),
    ("run.tool.output", {"tool": "sh", "stream": "stderr", "text": "\x1b[31mred\x1b[0m"}),
    ("run.retrieval", {"passages": [{"document": "documents/d1", "score": 0.8731, "page": None}]}),
    ("run.interrupted", {"node": "review", "value": {"question": "ok?"}, "id": "i-1"}),
    ("run.resumed", {"value": True}),
    ("run.retry", {"node": "draft", "attempt": 2, "delay": 0.25}),
    ("run.completed", {"output": {"answer": "42"}, "usage": {"total": 1e3}}),
    ("run.failed", {"error": 'the model said: "no"', "code": "UNAVAILABLE"}),
    ("run.cancelled", {}),
    ("run.timeout", {"seconds": 300}),
    ("workflow.started", {"workflow": "develop"}),
    ("workflow.progress", {"done": 3, "total": 5, "ratio": 0.6}),
    ("agent.started", {"name": "agents/a1", "tools": [], "context_sources": []}),
    ("document.uploaded", {"document": "documents/d1", "bytes": 123456789}),
    ("document.progress", {"chunks": 40, "of": 119}),
    ("document.indexed", {"document": "documents/d1", "chunks": 119, "seconds": 11.3}),
    ("document.failed", {"error": "not a PDF: %PDF header missing"}),
    ("document.deleted", None),
    ("thread.metadata", {"metadata": {"team": "infra", "tags": ["a", "b"]}}),
    ("system.undecodable", {"subject": "amelia.events.x", "bytes": 17}),
]

HOSTILE_DATA: list[dict[str, Any]] = [
    {"emoji": "👩‍💻🚀", "rtl": "שלום", "cjk": "漢字", "combining": "é", "zw": "\u200b\ufeff"},
    {"controls": "\x00\x01\x1f\x7f", "quotes": "\"'\\/", "newlines": "a\r\nb\u2028c\u2029"},
    {"surrogate pair": "\U0001f600", "bmp end": "\uffff", "private": "\ue000"},
    {"big": 2**53 + 1, "huge": 2**63, "neg": -(2**64), "max": 1.7976931348623157e308},
    {"tiny": 5e-324, "small": 1e-7, "tenth": 0.1, "third": 1 / 3, "negzero": -0.0, "int": 7},
    {"exp": 1e16, "exp2": 1.5e-5, "round": 100.0, "neg": -12.5},
    {"nested": [[[[]]], [{}], [None, True, False, 0, "", []]], "deep": {"a": {"b": {"c": [1]}}}},
    {"": "empty key", 'key with "quotes" and 🚀': None, "\x00": 0},
    {str(i): i for i in range(60)},  # a map this size: the encoder keeps the map's own order
    {"list": list(range(300))},
    {"long": "x" * 70_000},
]


def _event(event_type: str = "run.token", data: dict[str, Any] | None = None) -> events_pb2.Event:
    event = events_pb2.Event(
        id="0123456789abcdef0123456789abcdef",
        type=event_type,
        source="amelia.agents",
        subject=RUN,
        sequence=12_345,
        correlation_id="req-7",
    )
    event.time.seconds, event.time.nanos = 1_796_193_124, 417_867_123
    if data is not None:
        event.data.update(data)
    return event


def _same(event: events_pb2.Event) -> None:
    expected = to_json_text(event)
    assert event_json(event) == expected
    # And it is the proto JSON of the event: it parses back to the same message.
    back = json_format.Parse(event_json(event), events_pb2.Event())
    assert back == event


@pytest.mark.parametrize(("event_type", "data"), MESH_EVENTS, ids=[t for t, _ in MESH_EVENTS])
def test_every_event_type_of_the_mesh(event_type: str, data: dict[str, Any] | None) -> None:
    _same(_event(event_type, data))


@pytest.mark.parametrize("data", HOSTILE_DATA, ids=range(len(HOSTILE_DATA)))
def test_hostile_data(data: dict[str, Any]) -> None:
    _same(_event(data=data))


def _bare(**fields: Any) -> events_pb2.Event:
    return events_pb2.Event(**fields)


FIELD_CASES: list[events_pb2.Event] = [
    _bare(),  # nothing set: every field without presence at its default, no time, no data
    _bare(sequence=2**64 - 1),
    _bare(correlation_id="c"),  # a set field after unset ones: set ones come first
    _bare(subject="runs/x", sequence=1),
    _bare(id="ïd", type="t", source="ß", subject="s/\u00e9"),
]


@pytest.mark.parametrize("event", FIELD_CASES, ids=range(len(FIELD_CASES)))
def test_empty_and_partly_set_fields(event: events_pb2.Event) -> None:
    _same(event)


def test_an_empty_struct_and_an_unset_value() -> None:
    event = _event()
    event.data.SetInParent()  # present, empty: {}
    _same(event)
    event.data.fields[
        "unset"
    ].SetInParent()  # a Value with no kind: null (reads back as null_value)
    assert event_json(event) == to_json_text(event)
    assert json.loads(event_json(event))["data"] == {"unset": None}


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (0, 0),
        (1_796_193_124, 0),
        (1_796_193_124, 1_000_000),
        (1_796_193_124, 120_000),
        (1_796_193_124, 7),
        (1_796_193_124, 999_999_999),
        (-62_135_596_800, 0),  # 0001-01-01T00:00:00Z
        (253_402_300_799, 999_999_999),  # 9999-12-31T23:59:59.999999999Z
        (-1, 500_000_000),  # before the epoch
        (951_782_400, 0),  # 2000-02-29
    ],
)
def test_times(seconds: int, nanos: int) -> None:
    event = _event()
    event.time.seconds, event.time.nanos = seconds, nanos
    _same(event)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda e: e.data.update({"x": math.nan}),
        lambda e: e.data.update({"x": [1, {"y": math.inf}]}),
        lambda e: e.data.update({"x": -math.inf}),
        lambda e: setattr(e.time, "seconds", 253_402_300_800),
        lambda e: setattr(e.time, "seconds", -62_135_596_801),
        lambda e: setattr(e.time, "nanos", -1),
    ],
)
def test_what_proto_json_refuses_still_raises(break_it: Any) -> None:
    event = _event()
    break_it(event)
    with pytest.raises(Exception) as expected:  # whatever MessageToDict raises
        to_json_text(event)
    with pytest.raises(type(expected.value), match="^" + re.escape(str(expected.value)) + "$"):
        event_json(event)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**70), 2**70)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=15,
)


@settings(max_examples=60, deadline=None)
@given(
    data=st.dictionaries(st.text(), _JSON, max_size=8),
    strings=st.lists(st.text(), min_size=5, max_size=5),
    sequence=st.integers(0, 2**64 - 1),
    seconds=st.integers(-62_135_596_800, 253_402_300_799),
    nanos=st.integers(0, 999_999_999),
)
def test_any_event(
    data: dict[str, Any], strings: list[str], sequence: int, seconds: int, nanos: int
) -> None:
    event = events_pb2.Event(sequence=sequence)
    event.id, event.type, event.source, event.subject, event.correlation_id = strings
    event.time.seconds, event.time.nanos = seconds, nanos
    if data:
        event.data.update(data)
    assert event_json(event) == to_json_text(event)
    assert json.loads(event_json(event))["sequence"] == str(sequence)


def test_whole_numbers_are_integers_as_protojson_writes_them() -> None:
    """A Struct holds every number as a double: `attempt` 1 was written 1.0, grpc-gateway writes
    1. Whole numbers within ±2^53 are integers; others keep their float form."""
    data = {
        "attempt": 1,
        "step": 6.0,
        "neg": -3,
        "usage": {"total": 1e3},
        "list": [0, 2.5],
        "edge": 2.0**53,
        "beyond": 2.0**54,
        "delay": 0.25,
    }
    text = event_json(_event("run.retry", data))
    assert text == to_json_text(_event("run.retry", data))
    for shown in (
        '"attempt":1',
        '"step":6',
        '"neg":-3',
        '"usage":{"total":1000}',
        '"list":[0,2.5]',
        '"edge":9007199254740992',
        '"beyond":1.8014398509481984e+16',
        '"delay":0.25',
    ):
        assert re.search(re.escape(shown) + "[,}]", text), (shown, text)
