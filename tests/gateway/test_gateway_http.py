"""HTTP/JSON routes: transcoding, the documented error codes, deadlines, NDJSON streams, CORS, GZip.

Against a real gateway on uvicorn with the real events service; the agents and rag upstreams
point at closed ports here (their routes must answer 503 naming the service). The same routes
against the real agents and rag services are in test_gateway_mesh.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gateway_helpers import Publisher, RunningGateway, closed_address, new_subject, start_gateway
from gateway_helpers import wait_for as wait_until

from amelia_common.settings import Settings
from amelia_events.server import EventsService
from amelia_gateway.routes import ROUTES, RouteTable, Rule
from amelia_gateway.upstream import SERVICES

TOKEN = "s3cret-token"


def example_path(rule: Rule) -> str:
    return rule.template.format(**{v: "abc" for v in rule.variables})


@pytest.fixture
async def secured(gateway_settings: Settings) -> AsyncIterator[RunningGateway]:
    values = {**gateway_settings.model_dump(), "AMELIA_API_TOKEN": TOKEN, "MAX_REQUEST_BYTES": 4096}
    running = await start_gateway(Settings(_env_file=None, **values))  # type: ignore[call-arg]
    yield running
    await running.stop()


def test_every_rpc_is_served_over_http() -> None:
    served = RouteTable().covered_rpcs()
    every = {(s, m.name) for s, d in SERVICES.items() for m in d.methods}
    # UploadDocument (client streaming) is POST /v1/documents with a file body.
    assert every - served == {("RagService", "UploadDocument")}
    assert any(r.uploads and r.service == "RagService" for r in ROUTES)


async def test_openapi_describes_every_route(http: httpx.AsyncClient) -> None:
    reply = await http.get("/openapi.json")
    assert reply.status_code == 200
    document = reply.json()
    assert document["openapi"].startswith("3.")
    for rule in ROUTES:
        operation = document["paths"][rule.template][rule.method.lower()]
        assert operation["operationId"] == rule.operation_id
        assert operation["description"], rule.rpc  # from the proto comments
        assert "200" in operation["responses"] and "default" in operation["responses"]
    run = document["components"]["schemas"]["Run"]["properties"]
    assert run["createTime"]["format"] == "date-time"
    assert run["status"]["allOf"] == [{"$ref": "#/components/schemas/RunStatus"}]
    assert document["components"]["schemas"]["RunStatus"]["enum"][0] == "RUN_STATUS_UNSPECIFIED"
    stream_params = {
        p.get("name") for p in document["paths"]["/v1/events:stream"]["get"]["parameters"]
    }
    assert {"filter.types", "filter.subject", "afterSequence", "fromBeginning"} <= stream_params


async def test_events_routes_round_trip(http: httpx.AsyncClient) -> None:
    subject = new_subject()
    created = []
    for i in range(3):
        reply = await http.post(
            "/v1/events",
            json={"event": {"type": "app.token", "subject": subject, "data": {"i": i}}},
            headers={"X-Request-Id": f"req-{i}"},
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-request-id"] == f"req-{i}"
        created.append(reply.json()["event"])
    # Pagination is passed through: page_size and the next page token.
    page = await http.get("/v1/events", params={"filter.subject": subject, "pageSize": 2})
    assert page.status_code == 200, page.text
    body = page.json()
    assert [e["id"] for e in body["events"]] == [created[0]["id"], created[1]["id"]]
    assert body["nextPageToken"]
    rest = await http.get(
        "/v1/events", params={"filter.subject": subject, "page_token": body["nextPageToken"]}
    )
    assert [e["id"] for e in rest.json()["events"]] == [created[2]["id"]]
    typed = await http.get(
        "/v1/events",
        params=[
            ("filter.types", "other.*"),
            ("filter.types", "app.*"),
            ("filter.subject", subject),
        ],
    )
    assert len(typed.json()["events"]) == 3
    after = await http.get(
        "/v1/events", params={"filter.subject": subject, "afterSequence": created[1]["sequence"]}
    )
    assert [e["id"] for e in after.json()["events"]] == [created[2]["id"]]


def _status(reply: httpx.Response, http_status: int, code: int) -> dict[str, Any]:
    assert reply.status_code == http_status, (reply.status_code, reply.text)
    body: dict[str, Any] = reply.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], list)
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.RequestInfo"
    return body


async def test_bad_json_and_wrong_types_are_400_on_every_body_route(
    http: httpx.AsyncClient,
) -> None:
    body_rules = [r for r in ROUTES if r.body]
    assert len(body_rules) >= 9
    for rule in body_rules:
        path = example_path(rule)
        headers = {"Content-Type": "application/json"}
        reply = await http.request(rule.method, path, content=b"{not json", headers=headers)
        assert "not valid JSON" in _status(reply, 400, 3)["message"]
        reply = await http.request(rule.method, path, content=b"[1, 2]", headers=headers)
        assert "JSON object" in _status(reply, 400, 3)["message"]
        reply = await http.request(rule.method, path, json={"noSuchField": 1})
        assert "noSuchField" in _status(reply, 400, 3)["message"]
        reply = await http.request(rule.method, path, json={}, params={"x": "1"})
        _status(reply, 400, 3)
    wrong = await http.post("/v1/events", json={"event": {"type": 5}})
    assert "type" in _status(wrong, 400, 3)["message"]
    wrong = await http.post("/v1/search", json={"topK": "many"})
    assert "topK" in _status(wrong, 400, 3)["message"] or "top_k" in wrong.text
    wrong = await http.post("/v1/events", content=b"a=1", headers={"Content-Type": "text/plain"})
    _status(wrong, 415, 3)


async def test_a_oneof_given_twice_is_a_400_saying_so_not_a_wrong_type(
    http: httpx.AsyncClient,
) -> None:
    """`agent` and `workflow` together were refused as "cron: must be a JSON object, got {…}"
    although the cron is one: every ParseError was read as a value of the wrong type. The
    transcoder refuses before any upstream, so no mesh is needed."""
    both = {"agent": "agents/slow", "workflow": "workflows/echo", "input": {"message": "x"}}
    cron = {**both, "schedule": "0 0 1 1 *"}
    refused = [
        (await http.post("/v1/crons", json={"cron": cron}), "cron: "),
        (await http.post("/v1/threads/t1/crons", json={"cron": cron}), "cron: "),
        (await http.patch("/v1/crons/c1", json={"cron": cron}), "cron: "),
        (await http.post("/v1/runs", json={"run": both}), "run: "),
    ]
    for reply, owner in refused:
        message = _status(reply, 400, 3)["message"]
        assert message == f"{owner}only one of agent, workflow may be set, got both", message
    three = await http.get(
        "/v1/events:stream", params={"fromBeginning": "true", "afterSequence": 3}
    )
    assert _status(three, 400, 3)["message"].endswith(
        "only one of fromBeginning, afterSequence, startTime may be set,"
        " got fromBeginning and afterSequence"
    ), three.text
    # Other mistakes inside the same nested message keep saying what the value must be.
    enum = await http.post("/v1/runs", json={"run": {"agent": "agents/a", "status": "NOPE"}})
    assert _status(enum, 400, 3)["message"].startswith("run.status: must be one of RUN_STATUS_")
    nested = await http.post("/v1/crons", json={"cron": {"agent": "agents/a", "input": "hi"}})
    assert _status(nested, 400, 3)["message"] == 'cron.input: must be a JSON object, got "hi"'


async def test_bad_query_parameters_are_400_on_every_get_route(http: httpx.AsyncClient) -> None:
    for rule in (r for r in ROUTES if r.method in ("GET", "DELETE")):
        reply = await http.request(rule.method, example_path(rule), params={"noSuchParam": "1"})
        assert "noSuchParam" in _status(reply, 400, 3)["message"], rule
    for params in (
        {"pageSize": "lots"},
        {"afterSequence": "-1"},
        {"startTime": "yesterday"},
        {"filter.nope": "x"},
        {"filter": "x"},
    ):
        _status(await http.get("/v1/events", params=params), 400, 3)
    _status(await http.get("/v1/runs", params={"statuses": "RUN_STATUS_SLEEPING"}), 400, 3)
    _status(await http.get("/v1/events:stream", params={"fromBeginning": "maybe"}), 400, 3)


async def test_missing_fields_unknown_ids_and_routes(http: httpx.AsyncClient) -> None:
    _status(await http.post("/v1/events", json={}), 400, 3)  # no event type
    _status(await http.post("/v1/events", json={"event": {"subject": "runs/x"}}), 400, 3)
    _status(await http.get("/v1/events/999999999999"), 404, 5)
    _status(await http.get("/v1/events/not-a-number"), 400, 3)
    _status(await http.get("/v1/nothing/here"), 404, 5)
    reply = await http.put("/v1/events")
    _status(reply, 405, 12)
    assert reply.headers["allow"] == "POST, GET, OPTIONS"


async def test_wrong_token_is_401_on_every_route(secured: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=secured.url) as http:
        for rule in ROUTES:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
                reply = await http.request(
                    rule.method, example_path(rule), headers=headers, json={}
                )
                _status(reply, 401, 16)
                assert reply.headers["www-authenticate"].startswith("Bearer")
        _status(await http.get("/v1/status"), 401, 16)
        ok = await http.get("/v1/events", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, ok.text
        ok = await http.get("/v1/events", headers={"X-API-Key": TOKEN})
        assert ok.status_code == 200, ok.text
        assert (await http.get("/healthz")).status_code == 200  # liveness stays open
        assert (await http.get("/openapi.json")).status_code == 200


async def test_body_size_limit_is_413(secured: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=secured.url, headers=headers) as http:
        big = {"event": {"type": "app.token", "data": {"x": "y" * 5000}}}
        _status(await http.post("/v1/events", json=big), 413, 8)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"event": {"type": "app.token", "data": {"x": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}}}'

        _status(await http.post("/v1/events", content=chunks()), 413, 8)


async def test_unavailable_upstream_is_503_naming_the_service(http: httpx.AsyncClient) -> None:
    """All routes at once: a read is retried by gRPC (up to 5 attempts, with backoff) before
    it is UNAVAILABLE, which one route after another spent ~20 s waiting out."""
    rules = [r for r in ROUTES if r.service != "EventService"]
    replies = await asyncio.gather(
        *(
            http.request(rule.method, example_path(rule), json={} if rule.body else None)
            for rule in rules
        )
    )
    for rule, reply in zip(rules, replies, strict=True):
        body = _status(reply, 503, 14)
        served_by = {"GitService": "agents", "CronService": "agents", "RagService": "rag"}
        name = served_by.get(rule.service, "agents" if rule.service == "AgentService" else "?")
        assert f"the {name} service at 127.0.0.1:" in body["message"], (rule.rpc, body)


async def test_deadlines_are_passed_upstream(http: httpx.AsyncClient) -> None:
    _status(await http.get("/v1/events", headers={"X-Request-Timeout": "soon"}), 400, 3)
    _status(await http.get("/v1/events", headers={"X-Request-Timeout": "-1"}), 400, 3)
    _status(await http.get("/v1/events", headers={"grpc-timeout": "5 minutes"}), 400, 3)
    reply = await http.get("/v1/events", headers={"grpc-timeout": "1n"})
    _status(reply, 504, 4)
    reply = await http.get("/v1/events", headers={"X-Request-Timeout": "0.000001"})
    _status(reply, 504, 4)
    assert (await http.get("/v1/events", headers={"grpc-timeout": "10S"})).status_code == 200


async def test_streams_as_ndjson_and_cancelled_when_the_client_leaves(
    http: httpx.AsyncClient, publisher: Publisher, events_service: EventsService
) -> None:
    subject = new_subject()
    sequences = [await publisher.publish(subject, data={"i": i}) for i in range(3)]
    token = subject.replace("/", ".")
    params = {"filter.subject": subject, "fromBeginning": "true"}
    async with http.stream("GET", "/v1/events:stream", params=params) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        assert "content-encoding" not in reply.headers  # never gzipped: lines must flush
        lines = reply.aiter_lines()
        got = [json.loads(await anext(lines)) for _ in range(3)]
        assert [int(m["result"]["event"]["sequence"]) for m in got] == sequences
        live = await publisher.publish(subject, data={"i": 3})
        assert int(json.loads(await anext(lines))["result"]["event"]["sequence"]) == live
        assert events_service.servicer is not None
        assert any(token in f for r in events_service.servicer.readers for f in r.filters)
    # The client went away: the gateway cancelled its upstream stream.
    await wait_until(
        lambda: not any(token in f for r in events_service.servicer.readers for f in r.filters)  # type: ignore[union-attr]
    )
    bad = await http.get("/v1/events:stream", params={"filter.types": "Not A Type"})
    _status(bad, 400, 3)


async def test_an_ndjson_stream_that_asks_for_heartbeats_gets_them_between_events(
    http: httpx.AsyncClient, publisher: Publisher
) -> None:
    """`heartbeatSeconds` (StreamEventsRequest.heartbeat_seconds, docs/events.md): a line
    `{"result": {"heartbeat": …}}` after each second of silence, the event lines as ever."""
    subject = new_subject()
    sequence = await publisher.publish(subject)
    params = {"filter.subject": subject, "fromBeginning": "true", "heartbeatSeconds": "1"}
    async with http.stream("GET", "/v1/events:stream", params=params) as reply:
        assert reply.status_code == 200
        results: list[dict[str, Any]] = []
        async for line in reply.aiter_lines():  # (a busy machine may beat before the event)
            results.append(json.loads(line)["result"])
            if results[-1].get("heartbeat") and any(r.get("event") for r in results):
                break
    assert [int(r["event"]["sequence"]) for r in results if r.get("event")] == [sequence]
    beat = results[-1]["heartbeat"]
    assert (int(beat["lastSequence"]), beat["logReachable"], beat["status"]) == (sequence, True, "")


async def test_cors_gzip_health_and_status(
    http: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    origin = gateway.settings.CORS_ORIGINS[0]
    preflight = await http.options(
        "/v1/runs",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    denied = await http.options(
        "/v1/runs",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert denied.status_code == 400
    simple = await http.get("/v1/events", headers={"Origin": origin})
    assert simple.headers["access-control-allow-origin"] == origin

    big = await http.get("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert big.headers["content-encoding"] == "gzip"
    assert big.json()["openapi"]
    small = await http.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers

    assert (await http.get("/healthz")).json() == {"status": "ok"}
    status = (await http.get("/v1/status")).json()
    assert status["services"]["events"]["status"] == "SERVING"
    await wait_until(lambda: True)
    assert status["services"]["events"]["dependencies"]["nats"] == "SERVING"
    assert status["nats"] == "SERVING"
    assert status["services"]["agents"]["status"] == "UNREACHABLE"
    assert status["services"]["rag"]["status"] == "UNREACHABLE"
    assert status["status"] == "DEGRADED"
    assert status["gateway"]["connections"] == 0
    assert {"topics", "upstreamStreams", "subscriptions"} <= set(status["gateway"])
    assert status["localModel"]["status"] in ("SERVING", "STARTING", "UNREACHABLE", "OFF")
    assert not [key for key in _keys(status) if not LOWER_CAMEL.fullmatch(key)], "lowerCamelCase"


LOWER_CAMEL = re.compile(r"[a-z][A-Za-z0-9]*")


def _keys(value: Any) -> list[str]:
    """Every object key in a JSON value, at any depth."""
    if isinstance(value, dict):
        return [k for key, item in value.items() for k in [key, *_keys(item)]]
    if isinstance(value, list):
        return [k for item in value for k in _keys(item)]
    return []


async def test_no_token_means_loopback_only() -> None:
    settings = Settings(_env_file=None, HOST="0.0.0.0")  # type: ignore[call-arg]
    assert settings.bind_host == "127.0.0.1"
    settings = Settings(_env_file=None, HOST="0.0.0.0", AMELIA_API_TOKEN="t")  # type: ignore[call-arg]
    assert settings.bind_host == "0.0.0.0"
    assert closed_address()


async def test_shutdown_ends_ndjson_streams_with_a_last_error_line(
    gateway_settings: Settings,
) -> None:
    running = await start_gateway(gateway_settings)
    params = {"filter.subject": new_subject()}
    async with (
        httpx.AsyncClient(base_url=running.url, timeout=30) as http,
        http.stream("GET", "/v1/events:stream", params=params) as reply,
    ):
        assert reply.status_code == 200
        await wait_until(lambda: running.gateway.stats()["httpStreams"] == 1)
        stopping = asyncio.create_task(running.stop())
        lines = [json.loads(line) async for line in reply.aiter_lines() if line]
        await stopping
    assert lines == [
        {
            "error": {
                "code": 14,
                "message": "server shutting down",
                "details": lines[0]["error"]["details"],
            }
        }
    ]


def test_openapi_descriptions_match_the_protos(tmp_path: Any) -> None:
    """proto_docs.json is regenerated from protos/ (run the command below after editing them)."""
    from pathlib import Path

    from amelia_gateway import openapi

    protos = Path(__file__).resolve().parents[2] / "protos"
    fresh = tmp_path / "proto_docs.json"
    openapi.write_docs(protos, fresh)
    assert fresh.read_text() == openapi.DOCS_FILE.read_text(), (
        "stale: run `.venv/bin/python -m amelia_gateway.openapi --write-docs protos`"
    )
