"""Input the gateway took silently, or more leniently on one side than the other (QA s27): each is
refused now with a clear error, the same way wherever the same thing can be sent.

- F6: one field under both its JSON names (`requestId` and `request_id`) in a body, or in a
  query string: json_format kept the last, so a retry with `requestId` alone made a second run.
- L7: a body that names another resource than the path (`POST /v1/runs/A:cancel` with
  `{"name": "runs/B"}` cancelled A).
- L11: `events/18446744073709551616` (beyond uint64) was 404, not 400 like other bad names.
- L12: `X-Request-Timeout: inf` / `1e308` / `3601` were cut to 3600 s, not refused.
- L6: `Content-Type: application/json; charset=latin-1` was read as UTF-8.
- L2: the socket took `filter.types` as a string, a `since` time without a zone, unknown fields
  on `ping`: it reads its filter and time by the HTTP side's rules and code now.
- L8: the services echoed any `x-request-id` (spaces, `<>`, 500 characters) into the trailer,
  the error's RequestInfo and every log line of the call: the gateway's rule applies there too.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from gateway_helpers import Client, Mesh, RunningGateway
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import error_details_pb2, status_pb2

from amelia.v1 import agents_pb2, crons_pb2, events_pb2, events_pb2_grpc
from amelia_common.grpc_client import STATUS_DETAILS
from amelia_common.grpc_server import request_id_of
from amelia_gateway.errors import GatewayError
from amelia_gateway.routes import ROUTES
from amelia_gateway.transcode import build_request, is_map, is_repeated, msg_type
from amelia_gateway.upstream import message_class

# Message types a JSON object does not stand for (a string, a scalar or free-form JSON).
_NOT_OBJECTS = ("google.protobuf.",)


def _spelt_twice(descriptor: Descriptor, prefix: list[str], depth: int) -> Iterator[Any]:
    """(body, json name, proto name) for every field, at any depth, whose two names differ: a
    body giving it under both, nested where it lives."""
    for field in descriptor.fields:
        if field.json_name != field.name:
            yield _nest(prefix, {field.json_name: None, field.name: None}), field
        if (
            depth < 4
            and field.type == FieldDescriptor.TYPE_MESSAGE
            and not is_map(field)
            and not msg_type(field).full_name.startswith(_NOT_OBJECTS)
        ):
            step = f"{field.json_name}[]" if is_repeated(field) else field.json_name
            yield from _spelt_twice(msg_type(field), [*prefix, step], depth + 1)


def _nest(prefix: list[str], inner: dict[str, Any]) -> dict[str, Any]:
    value: Any = inner
    for step in reversed(prefix):
        value = {step[:-2]: [value]} if step.endswith("[]") else {step: value}
    return dict(value)


def _body_cases() -> list[Any]:
    cases = []
    for rule in ROUTES:
        if not rule.body:
            continue
        for body, field in _spelt_twice(message_class(rule.input)().DESCRIPTOR, [], 0):
            cases.append(
                pytest.param(rule, body, field, id=f"{rule.rpc}:{body}"[:120].replace(" ", ""))
            )
    return cases


BODY_CASES = _body_cases()


def test_there_are_fields_with_two_names_in_every_kind_of_body() -> None:
    assert len(BODY_CASES) > 50, len(BODY_CASES)
    assert {case.values[0].service for case in BODY_CASES} >= {
        "AgentService",
        "EventService",
        "RagService",
        "CronService",
    }


@pytest.mark.parametrize(("rule", "body", "field"), BODY_CASES)
def test_a_field_under_both_its_names_in_a_body_is_refused(
    rule: Any, body: dict[str, Any], field: FieldDescriptor
) -> None:
    """QA F6: json_format took both and kept one silently; protojson refuses a duplicate."""
    with pytest.raises(GatewayError) as refused:
        build_request(message_class(rule.input), body=body, query=[], path={}, body_field=rule.body)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    message = refused.value.message
    assert f"'{field.json_name}' and '{field.name}' name the same field" in message, message


def test_the_two_names_of_a_nested_field_are_named_with_its_path() -> None:
    with pytest.raises(GatewayError) as refused:
        build_request(
            agents_pb2.CreateAgentRequest,
            body={"agent": {"displayName": "a", "display_name": "b"}},
            query=[],
            path={},
            body_field="agent",
        )
    assert refused.value.message == (
        "agent: 'displayName' and 'display_name' name the same field: give it once"
    )


def test_either_name_alone_is_still_taken() -> None:
    for key in ("requestId", "request_id"):
        request = build_request(
            agents_pb2.CreateRunRequest, body={key: "k1"}, query=[], path={}, body_field="run"
        )
        assert isinstance(request, agents_pb2.CreateRunRequest) and request.request_id == "k1"


@pytest.mark.parametrize(
    ("message_cls", "query", "named"),
    [
        (
            agents_pb2.ListRunsRequest,
            [("pageSize", "1"), ("page_size", "2")],
            ("pageSize", "page_size"),
        ),
        (
            events_pb2.StreamEventsRequest,
            [("afterSequence", "5"), ("after_sequence", "6")],
            ("afterSequence", "after_sequence"),
        ),
        (
            events_pb2.StreamEventsRequest,
            [("maxEventsPerMessage", "5"), ("max_events_per_message", "5")],
            ("maxEventsPerMessage", "max_events_per_message"),
        ),
    ],
)
def test_a_field_under_both_its_names_in_a_query_is_refused(
    message_cls: Any, query: list[tuple[str, str]], named: tuple[str, str]
) -> None:
    with pytest.raises(GatewayError) as refused:
        build_request(message_cls, body=None, query=query, path={})
    assert refused.value.message == (
        f"query parameters '{named[0]}' and '{named[1]}' name the same field: give it once"
    )


def test_a_repeated_query_field_under_one_name_is_still_a_list() -> None:
    request = build_request(
        events_pb2.StreamEventsRequest,
        body=None,
        query=[("filter.types", "run.*"), ("filter.types", "app.x")],
        path={},
    )
    assert isinstance(request, events_pb2.StreamEventsRequest)
    assert list(request.filter.types) == ["run.*", "app.x"]


A = f"runs/{uuid.uuid4()}"
B = f"runs/{uuid.uuid4()}"


@pytest.mark.parametrize(
    ("message_cls", "body", "path", "body_field", "error"),
    [
        (
            agents_pb2.CancelRunRequest,
            {"name": B},
            {"name": A},
            "*",
            f'name "{B}" in the request body differs from "{A}" in the path',
        ),
        (
            crons_pb2.CreateCronRequest,
            {"cron": {"thread": "threads/u"}},
            {"cron.thread": "threads/t"},
            "cron",
            'cron.thread "threads/u" in the request body differs from "threads/t" in the path',
        ),
    ],
)
def test_a_body_naming_another_resource_than_the_path_is_refused(
    message_cls: Any, body: dict[str, Any], path: dict[str, str], body_field: str, error: str
) -> None:
    """QA L7: grpc-gateway lets the path win silently; the client meant something else."""
    with pytest.raises(GatewayError) as refused:
        build_request(message_cls, body=body, query=[], path=path, body_field=body_field)
    assert refused.value.message.startswith(error), refused.value.message


def test_a_body_naming_the_resource_of_the_path_is_taken() -> None:
    request = build_request(
        agents_pb2.CancelRunRequest, body={"name": A}, query=[], path={"name": A}, body_field="*"
    )
    assert isinstance(request, agents_pb2.CancelRunRequest) and request.name == A


@pytest.mark.parametrize("value", [[], "", [1]])
def test_a_message_field_that_is_not_an_object_is_refused(value: Any) -> None:
    """json_format iterated over `[]` and `""` for keys and left the run empty."""
    with pytest.raises(GatewayError) as refused:
        build_request(agents_pb2.CreateRunRequest, body={"run": value}, query=[], path={})
    assert refused.value.message.startswith("run: must be a JSON object, got "), refused.value


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("req-42", True),
        ("a.b:c_d-e", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("x" * 500, False),
        ("bad id <>", False),
        ("", False),
        ("abc\n", False),
        ("é", False),
    ],
)
def test_one_rule_for_a_request_id(given: str, kept: bool) -> None:
    rid = request_id_of(given)
    assert (rid == given) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid


# ----------------------------------------------------------------------------- through servers


async def test_an_ambiguous_idempotency_key_makes_no_run_and_a_retry_makes_one(
    mesh: Mesh,
) -> None:
    """QA F6: `{"requestId": a, "request_id": b}` made a run under b, and the retry with
    `requestId: a` alone a second one."""
    key = f"strict-{uuid.uuid4().hex[:12]}"
    run = {"workflow": "workflows/echo", "input": {"message": "x"}}
    refused = await mesh.http.post(
        "/v1/runs", json={"run": run, "requestId": key, "request_id": key + "-other"}
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["message"] == (
        "'requestId' and 'request_id' name the same field: give it once"
    )
    first = await mesh.http.post("/v1/runs", json={"run": run, "requestId": key})
    again = await mesh.http.post("/v1/runs", json={"run": run, "request_id": key})
    assert first.status_code == 200 and again.status_code == 200, (first.text, again.text)
    assert first.json()["run"]["name"] == again.json()["run"]["name"]
    other = await mesh.http.post("/v1/runs", json={"run": run, "requestId": key + "-other"})
    assert other.json()["run"]["name"] != first.json()["run"]["name"]  # b made no run before


async def test_a_cancel_whose_body_names_another_run_is_refused(mesh: Mesh) -> None:
    """QA L7: it cancelled the run of the path. Neither run exists here: the refusal comes from
    the gateway before any call (old code: 404 for the run of the path)."""
    refused = await mesh.http.post(f"/v1/{A}:cancel", json={"name": B})
    assert refused.status_code == 400, refused.text
    assert "differs from" in refused.json()["message"]
    same = await mesh.http.post(f"/v1/{A}:cancel", json={"name": A})
    assert same.status_code == 404, same.text  # through to the service, as without a name


async def test_an_event_sequence_beyond_uint64_is_a_bad_name(http: httpx.AsyncClient) -> None:
    """QA L11: 404 'not found' while `events/-1`, `events/0` and `events/abc` were 400."""
    for name in ("18446744073709551616", "99999999999999999999", "0", "abc"):
        reply = await http.get(f"/v1/events/{name}")
        assert reply.status_code == 400, (name, reply.text)
        assert "from 1 to 18446744073709551615" in reply.json()["message"], reply.text
    assert (await http.get("/v1/events/18446744073709551615")).status_code == 404


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Request-Timeout", "inf"),
        ("X-Request-Timeout", "1e308"),
        ("X-Request-Timeout", "3601"),
        ("X-Request-Timeout", "3600.5"),
        ("grpc-timeout", "61M"),
        ("grpc-timeout", "2H"),
    ],
)
async def test_a_deadline_over_an_hour_is_refused(
    http: httpx.AsyncClient, header: str, value: str
) -> None:
    """QA L12: accepted and cut to 3600 s, though the docs say at most 3600 s."""
    reply = await http.get("/v1/events", params={"pageSize": "1"}, headers={header: value})
    assert reply.status_code == 400, reply.text
    assert reply.json()["message"] == (
        f"{header} header '{value}' is more than 3600 seconds, the longest deadline the gateway"
        " takes"
    )


async def test_a_deadline_of_an_hour_is_taken(http: httpx.AsyncClient) -> None:
    for header, value in (("X-Request-Timeout", "3600"), ("grpc-timeout", "1H")):
        reply = await http.get("/v1/events", params={"pageSize": "1"}, headers={header: value})
        assert reply.status_code == 200, reply.text


async def test_a_json_body_in_another_charset_is_a_415(http: httpx.AsyncClient) -> None:
    """QA L6: `charset=latin-1` was decoded as UTF-8 ('é' sent as one byte: 400 not UTF-8,
    or another text than the client meant)."""
    body = '{"event": {"type": "app.x", "subject": "a/b"}}'.encode("latin-1")
    for charset in ("latin-1", "ISO-8859-1", "utf-16"):
        reply = await http.post(
            "/v1/events",
            content=body,
            headers={"Content-Type": f"application/json; charset={charset}"},
        )
        assert reply.status_code == 415, reply.text
        assert reply.json()["message"].startswith(f"charset '{charset}' is not supported")
    for content_type in ("application/json; charset=UTF-8", 'application/json;charset="utf8"'):
        reply = await http.post("/v1/events", content=body, headers={"Content-Type": content_type})
        assert reply.status_code == 200, reply.text


async def _error_for(client: Client, message: dict[str, Any]) -> dict[str, Any]:
    await client.send(message)
    reply = await client.recv_type("error")
    assert reply["error"]["code"] == 3 and reply["final"] is True, reply
    return reply


async def test_the_socket_reads_as_strictly_as_http(gateway: RunningGateway) -> None:
    """QA L2: a string `filter.types`, a `since` without a zone, unknown fields on `ping`
    were taken. Each is an `error` now (no `subscribed`), and the socket goes on."""
    client = await Client.connect(gateway.ws_url)
    try:
        reply = await _error_for(
            client, {"type": "subscribe", "id": "s1", "filter": {"types": "run.*"}}
        )
        assert reply["subscription"] == "s1"
        assert reply["error"]["message"] == (
            'subscribe: filter.types: must be a JSON array, got "run.*"'
        )
        reply = await _error_for(
            client, {"type": "subscribe", "id": "s2", "since": "2026-12-05T00:00:00"}
        )
        assert reply["error"]["message"] == (
            'since: must be an RFC 3339 time like "2026-01-01T00:00:00Z", got "2026-12-05T00:00:00"'
        )
        reply = await _error_for(client, {"type": "ping", "extra": 1})
        assert reply["error"]["message"] == (
            "unknown field(s) in ping: 'extra'; its fields are type"
        )
        reply = await _error_for(client, {"type": "unsubscribe", "id": "s1", "force": True})
        assert reply["error"]["message"].startswith("unknown field(s) in unsubscribe: 'force'")
        # The socket goes on, and what is well formed is taken.
        await client.send({"type": "ping"})
        assert (await client.recv_type("pong"))["type"] == "pong"
        await client.send({"type": "pong", "time": 1.5})
        await client.subscribe("s3", filter={"types": ["app.x"]}, since="2026-12-05T00:00:00+01:00")
    finally:
        await client.close()


@pytest.mark.parametrize("given", ["bad id <>", "x" * 500, "semi;colon"])
async def test_a_service_replaces_a_malformed_request_id(events_address: str, given: str) -> None:
    """QA L8: the services echoed any x-request-id into the trailer, the error's RequestInfo and
    (bound for the call) every log line. The log lines carry the same value as the trailer:
    `ServerInterceptor._enter` binds the one it sets there."""
    async with grpc.aio.insecure_channel(events_address) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)
        call = stub.GetEvent(
            events_pb2.GetEventRequest(name="events/0"), metadata=(("x-request-id", given),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call
    trailers = dict(failed.value.trailing_metadata() or ())
    rid = trailers["x-request-id"]
    assert rid != given and re.fullmatch(r"[0-9a-f]{32}", str(rid)), rid
    status = status_pb2.Status.FromString(trailers[STATUS_DETAILS])
    info = error_details_pb2.RequestInfo()
    assert status.details[0].Unpack(info) and info.request_id == rid


async def test_a_service_keeps_a_well_formed_request_id(events_address: str) -> None:
    async with grpc.aio.insecure_channel(events_address) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)
        call = stub.GetEvent(
            events_pb2.GetEventRequest(name="events/0"), metadata=(("x-request-id", "req-7.a"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call
    assert dict(failed.value.trailing_metadata() or ())["x-request-id"] == "req-7.a"
