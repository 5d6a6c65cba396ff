"""`transcode.build_request` in process: a JSON body that does not fit the request message is
INVALID_ARGUMENT with one line naming the field by its JSON path, what it must be and what it
got (never protobuf's own text: "Struct must be in a dict which is hello at …", a newline and
"Available Fields(except extensions)"). The HTTP tests go through a running gateway; these
cover each kind of mistake once, without one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, OneofDescriptor
from google.protobuf.message import Message

from amelia.v1 import agents_pb2, events_pb2, rag_pb2
from amelia_gateway.errors import GatewayError
from amelia_gateway.routes import ROUTES
from amelia_gateway.transcode import build_request, is_repeated
from amelia_gateway.upstream import message_class

REFUSED: list[tuple[type[Message], dict[str, Any], str]] = [
    (
        agents_pb2.CreateRunRequest,
        {"run": {"input": "hello"}},
        'run.input: must be a JSON object, got "hello"',
    ),
    (
        agents_pb2.CreateRunRequest,
        {"colour": "red"},
        'unknown field "colour" in CreateRunRequest body; its fields are run, requestId',
    ),
    (
        agents_pb2.CreateRunRequest,
        {"run": {"colour": "red"}},
        'unknown field "colour" in run; its fields are name, agent, workflow,',
    ),
    (agents_pb2.CreateRunRequest, {"run": "x"}, 'run: must be a JSON object, got "x"'),
    (agents_pb2.CreateRunRequest, {"requestId": 3}, "requestId: must be a string, got 3"),
    (
        agents_pb2.CreateRunRequest,
        {"run": {"timeout": 5}},
        'run.timeout: must be a duration in seconds like "30s" or "1.5s", got 5',
    ),
    (
        agents_pb2.ListRunsRequest,
        {"pageSize": "lots"},
        'pageSize: must be an integer from -2147483648 to 2147483647, got "lots"',
    ),
    (agents_pb2.ListRunsRequest, {"page_size": 1.5}, "page_size: must be an integer from"),
    (
        agents_pb2.ListRunsRequest,
        {"pageSize": 2**40},
        "pageSize: must be an integer from -2147483648 to 2147483647, got 1099511627776",
    ),
    (
        agents_pb2.ListRunsRequest,
        {"pageSize": True},
        "pageSize: must be an integer from -2147483648 to 2147483647, got true",
    ),
    (
        agents_pb2.ListRunsRequest,
        {"statuses": "NOPE"},
        'statuses: must be a JSON array, got "NOPE"',
    ),
    (agents_pb2.ListRunsRequest, {"statuses": ["NOPE"]}, "statuses[0]: must be one of RUN_STATUS_"),
    (
        agents_pb2.CreateAgentRequest,
        {"agent": {"temperature": "hot"}},
        'agent.temperature: must be a number, got "hot"',
    ),
    (
        events_pb2.ListEventsRequest,
        {"filter": {"types": [1]}},
        "filter.types: must be a JSON array, each item a string, got [1]",
    ),
    (
        events_pb2.ListEventsRequest,
        {"startTime": "yesterday"},
        'startTime: must be an RFC 3339 time like "2026-01-01T00:00:00Z", got "yesterday"',
    ),
    (
        events_pb2.ListEventsRequest,
        {"startTime": "2026-01-01T00:00:00+99:00"},
        'startTime: must be an RFC 3339 time like "2026-01-01T00:00:00Z", its UTC offset from'
        ' -23:59 to +23:59, got "2026-01-01T00:00:00+99:00"',
    ),
    (
        agents_pb2.WaitRunRequest,
        {"name": "runs/x", "startTime": "2026-01-01T00:00:00-05:60"},
        "startTime: must be an RFC 3339 time like",
    ),
    (
        agents_pb2.ListRunsRequest,
        {"createdAfter": "2026-01-01T00:00:00.5+24:00"},
        "createdAfter: must be an RFC 3339 time like",
    ),
    (
        events_pb2.PublishEventRequest,
        {"event": {"data": [1]}},
        "event.data: must be a JSON object, got [1]",
    ),
    (
        events_pb2.PublishEventsRequest,
        {"events": [{"type": "a.b"}, {"data": "x"}]},
        'events[1].data: must be a JSON object, got "x"',
    ),
    (
        events_pb2.PublishEventsRequest,
        {"events": [{"type": "a.b"}, {"colour": "x"}]},
        'unknown field "colour" in events[1]; its fields are id, type,',
    ),
    (
        rag_pb2.SearchRequest,
        {"metadataFilter": {"team": {"name": "qa"}}},
        "metadataFilter: must be a JSON object, each value a string, a number or true/false,"
        ' got {"team": {"name": "qa"}}',
    ),
    (
        agents_pb2.ListThreadsRequest,
        {"metadataFilter": {"n": 1, "team": None}},
        "metadataFilter: must be a JSON object, each value a string, a number or true/false,"
        ' got {"n": 1, "team": null}',
    ),
    (
        agents_pb2.CreateRunRequest,
        {"run": {"agent": "agents/a", "workflow": "workflows/w"}},
        "run: only one of agent, workflow may be set, got both",
    ),
    (
        events_pb2.StreamEventsRequest,
        {"fromBeginning": True, "after_sequence": "3", "startTime": "2026-01-01T00:00:00Z"},
        "only one of fromBeginning, afterSequence, startTime may be set,"
        " got fromBeginning, afterSequence and startTime",
    ),
    (
        agents_pb2.CreateRunRequest,
        {"run": {"input": "x" * 5000}},
        'run.input: must be a JSON object, got "xxx',
    ),
]


@pytest.mark.parametrize(("request_type", "body", "message"), REFUSED)
def test_a_body_that_does_not_fit_says_which_field_and_why(
    request_type: type[Message], body: dict[str, Any], message: str
) -> None:
    with pytest.raises(GatewayError) as refused:
        build_request(request_type, body=body, query=[], path={})
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    got = refused.value.message
    assert got.startswith(message), got
    assert "\n" not in got and len(got) <= 300, got
    for noise in ("Failed to parse", "Available Fields", "Message type", " at "):
        assert noise not in got, got


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (
            [("startTime", "soon")],
            "query parameter 'startTime': must be an RFC 3339 time like"
            ' "2026-01-01T00:00:00Z", got "soon"',
        ),
        (
            [("pageSize", "3"), ("afterSequence", "-1")],
            "query parameter 'afterSequence': must be an integer from 0 to",
        ),
        (
            [("pageSize", "99999999999")],
            "query parameter 'pageSize': must be an integer from -2147483648 to 2147483647,"
            ' got "99999999999"',
        ),
        (
            [("page_size", "99999999999")],
            "query parameter 'page_size': must be an integer from -2147483648",
        ),
        ([("pageSize", "lots")], "query parameter 'pageSize': must be an integer from"),
        (
            [("startTime", "2026-01-01T00:00:00+99:00")],
            "query parameter 'startTime': must be an RFC 3339 time like"
            ' "2026-01-01T00:00:00Z", its UTC offset from -23:59 to +23:59',
        ),
    ],
)
def test_a_query_value_that_does_not_fit_is_named_as_the_client_wrote_it(
    items: list[tuple[str, str]], message: str
) -> None:
    """One parameter, one name in every error about it: the key the client sent."""
    with pytest.raises(GatewayError) as refused:
        build_request(events_pb2.ListEventsRequest, body=None, query=items, path={})
    assert refused.value.message.startswith(message), refused.value.message


@pytest.mark.parametrize(
    "mask",
    [
        ["maxTokens", "displayName"],
        ["max_tokens", "display_name"],
        ["maxTokens", "display_name"],
        "maxTokens,displayName",
        "max_tokens, display_name",
    ],
)
def test_an_update_mask_is_taken_in_camel_or_snake_case_as_a_list_or_a_string(mask: Any) -> None:
    """grpc-gateway takes a FieldMask as one comma-separated string of lowerCamelCase paths;
    the services read a list of the proto's snake_case names."""
    for key in ("updateMask", "update_mask"):
        request = build_request(
            agents_pb2.UpdateAgentRequest,
            body={"agent": {"displayName": "x"}, key: mask},
            query=[],
            path={"agent.name": "agents/a"},
        )
        assert list(request.update_mask) == ["max_tokens", "display_name"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "request_type",
    [
        agents_pb2.ListThreadsRequest,
        agents_pb2.CountThreadsRequest,
        agents_pb2.ListThreadHistoryRequest,
        rag_pb2.ListDocumentsRequest,
        rag_pb2.SearchRequest,
    ],
)
def test_a_metadata_filter_takes_numbers_and_booleans_as_their_json_text(
    request_type: type[Message],
) -> None:
    """QA L3: LangGraph's threads/search takes any JSON value in a metadata filter; a number or
    a boolean in the body is the text the query string (`metadataFilter[n]=1`) sends."""
    for key in ("metadataFilter", "metadata_filter"):
        body = {key: {"n": 1, "half": 0.5, "whole": 2.0, "ok": True, "no": False, "s": "1"}}
        request = build_request(request_type, body=body, query=[], path={})
        assert dict(request.metadata_filter) == {  # type: ignore[attr-defined]
            "n": "1",
            "half": "0.5",
            "whole": "2",
            "ok": "true",
            "no": "false",
            "s": "1",
        }


# A JSON value each kind of oneof member takes (the test gives two members at once).
_MEMBER_VALUES: dict[int, Any] = {
    FieldDescriptor.TYPE_STRING: "x",
    FieldDescriptor.TYPE_BOOL: True,
    FieldDescriptor.TYPE_UINT64: "3",
    FieldDescriptor.TYPE_BYTES: "",
}
_MEMBER_MESSAGES = {"google.protobuf.Timestamp": "2026-01-01T00:00:00Z"}


def _oneofs(
    descriptor: Descriptor, path: tuple[str, ...] = (), seen: frozenset[str] = frozenset()
) -> Iterator[tuple[tuple[str, ...], OneofDescriptor]]:
    """Every oneof a request can reach through singular message fields, with its JSON path
    (not the one-member oneof of a proto3 `optional` field: it cannot be given twice)."""
    for oneof in descriptor.oneofs:
        if len(oneof.fields) > 1:
            yield path, oneof
    for field in descriptor.fields:
        kind = field.message_type
        if kind is None or is_repeated(field) or kind.full_name.startswith("google.protobuf."):
            continue
        if kind.full_name not in seen:
            yield from _oneofs(kind, (*path, field.json_name), seen | {descriptor.full_name})


def _member_value(field: FieldDescriptor) -> Any:
    if field.message_type is not None:
        return _MEMBER_MESSAGES.get(field.message_type.full_name, {})
    return _MEMBER_VALUES[field.type]


def test_a_oneof_given_twice_is_said_so_for_every_request_of_every_route() -> None:
    """Not "must be a JSON object, got {…}": every oneof any route's request reaches."""
    checked = set()
    for rule in ROUTES:
        for path, oneof in _oneofs(rule.input):
            first, second = oneof.fields[:2]
            body: dict[str, Any] = {
                first.json_name: _member_value(first),
                second.json_name: _member_value(second),
            }
            for name in reversed(path):
                body = {name: body}
            with pytest.raises(GatewayError) as refused:
                build_request(message_class(rule.input), body=body, query=[], path={})
            members = ", ".join(f.json_name for f in oneof.fields)
            owner = ".".join(path) + ": " if path else ""
            assert refused.value.message.startswith(
                f"{owner}only one of {members} may be set, got "
            ), (rule.template, refused.value.message)
            checked.add(oneof.full_name)
    # Run.target, Cron.target, StreamEventsRequest.start: the ones the routes reach today.
    assert len(checked) >= 3, checked


@pytest.mark.parametrize("offset", ["+23:59", "-23:59", "+05:30", "+00:00", "-00:00", "Z"])
def test_a_time_with_any_offset_of_a_day_is_taken(offset: str) -> None:
    """The offsets RFC 3339 allows are read as the instant they name."""
    request = build_request(
        events_pb2.ListEventsRequest,
        body={"startTime": f"2026-01-02T00:00:00{offset}"},
        query=[],
        path={},
    )
    assert isinstance(request, events_pb2.ListEventsRequest)
    sign = -1 if offset.startswith("+") else 1
    hours, minutes = (0, 0) if offset == "Z" else map(int, offset[1:].split(":"))
    expected = 1767312000 + sign * (hours * 3600 + minutes * 60)
    assert request.start_time.seconds == expected
