"""Hostile and malformed HTTP input: a 4xx with a google.rpc.Status body, nothing stored, and the
gateway still healthy afterwards.

Every JSON the gateway reads (request bodies, multipart form fields; the socket's messages are in
test_gateway_ws_hostile.py) goes through one parser with limits: nesting depth, numbers Python
cannot convert, NaN/Infinity (JSON has none), lone surrogates (not Unicode). Wrong methods are
405 with the path's real `Allow` everywhere, and an exception escaping a route is a JSON 500.
The agents and rag upstreams point at closed ports here: a 400 proves the gateway refused the
request itself instead of forwarding it (forwarding would be a 503).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from gateway_helpers import RunningGateway, new_subject
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from amelia_gateway.app import LOCAL_ROUTES
from amelia_gateway.routes import ROUTES, Rule

DEPTH = 100_000  # far past Python's recursion limit


def example_path(rule: Rule) -> str:
    return rule.template.format(**{v: "abc" for v in rule.variables})


def nested(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


# (body, a word the error message must contain)
HOSTILE_BODIES: dict[str, tuple[bytes, str]] = {
    "nested past the recursion limit": (nested(DEPTH).encode(), "nested"),
    "nested arrays past the recursion limit": (
        b'{"a":' + b"[" * DEPTH + b"]" * DEPTH + b"}",
        "nested",
    ),
    "nested 40 deep": (nested(40).encode(), "nested"),
    "a 5000-digit integer": (b'{"pageSize": ' + b"9" * 5000 + b"}", "digits"),
    "NaN": (b'{"a": NaN}', "NaN"),
    "Infinity": (b'{"a": [1, Infinity]}', "Infinity"),
    "-Infinity": (b'{"a": {"b": -Infinity}}', "Infinity"),
    "a number too large for a double": (b'{"a": 1e999}', "finite"),
    "a lone surrogate": (b'{"a": "\\ud800"}', "surrogate"),
    "a lone surrogate in a key": (b'{"\\udfff": 1}', "surrogate"),
    "a key given twice": (b'{"a": {"team": "bulk", "team": "qa"}}', "'team' more than once"),
}


def _status(reply: httpx.Response, http_status: int, code: int) -> dict[str, Any]:
    assert reply.status_code == http_status, (reply.status_code, reply.text[:500])
    assert reply.headers["content-type"] == "application/json", reply.headers
    body: dict[str, Any] = reply.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    (info,) = body["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.RequestInfo"
    assert info["requestId"] == reply.headers["x-request-id"]
    return body


async def _healthy(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    subject = new_subject()
    reply = await http.post("/v1/events", json={"event": {"type": "app.token", "subject": subject}})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("case", sorted(HOSTILE_BODIES))
async def test_hostile_json_is_400_on_every_body_route(http: httpx.AsyncClient, case: str) -> None:
    body, word = HOSTILE_BODIES[case]
    for rule in (r for r in ROUTES if r.body):
        reply = await http.request(
            rule.method,
            example_path(rule),
            content=body,
            headers={"Content-Type": "application/json"},
        )
        message = _status(reply, 400, 3)["message"]
        assert word in message and "request body" in message, (rule.template, message)
    await _healthy(http)


async def test_non_finite_event_data_is_refused_and_not_stored(http: httpx.AsyncClient) -> None:
    subject = new_subject()
    for number in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        body = b'{"event": {"type": "app.token", "subject": "%s", "data": {"x": %s}}}' % (
            subject.encode(),
            number,
        )
        reply = await http.post(
            "/v1/events", content=body, headers={"Content-Type": "application/json"}
        )
        _status(reply, 400, 3)
    # The proto JSON spellings of non-finite numbers, in double/float fields, are refused too.
    _status(await http.post("/v1/search", json={"query": "q", "minScore": "NaN"}), 400, 3)
    _status(
        await http.post(
            "/v1/agents", json={"agent": {"model": "offline:echo", "temperature": "-Infinity"}}
        ),
        400,
        3,
    )
    listed = await http.get("/v1/events", params={"filter.subject": subject})
    assert listed.status_code == 200 and listed.json()["events"] == []
    await _healthy(http)


FIELD_DEPTH = 10_000  # past the recursion limit, under the 64 KiB a form field may have


async def test_hostile_query_values_are_400_with_a_short_message(http: httpx.AsyncClient) -> None:
    long_digits = "9" * 5000
    for query in (
        "afterSequence=%C2%B2",  # '²': a digit to str.isdigit, not to int()
        f"afterSequence={long_digits}",
        f"pageSize={long_digits}",
        "filter.subject=runs/%ED%A0%80",  # an encoded lone surrogate: not UTF-8
    ):
        reply = await http.get(f"/v1/events?{query}")
        assert len(_status(reply, 400, 3)["message"]) < 400, query
    body = {"event": {"type": "app.token", "sequence": long_digits}}
    assert len(_status(await http.post("/v1/events", json=body), 400, 3)["message"]) < 400
    await _healthy(http)


async def test_a_huge_body_does_not_stall_other_requests(http: httpx.AsyncClient) -> None:
    """Decoding megabytes of JSON takes seconds; the gateway answers others meanwhile.

    The body is refused by the gateway itself after the costly part (an unknown field after a
    huge `data`), so only the gateway's own work is measured against its own answers: pings
    during it must take a small part of its time, not wait for all of it.
    """
    numbers = b",".join([b"0"] * 200_000)
    body = b'{"event": {"type": "app.token", "data": {"a": [%s]}, "noSuchField": 1}}' % numbers
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def ping() -> None:
        while True:
            started = loop.time()
            assert (await http.get("/healthz")).status_code == 200
            latencies.append(loop.time() - started)
            await asyncio.sleep(0.01)

    pinger = asyncio.create_task(ping())
    try:
        started = loop.time()
        reply = await http.post(
            "/v1/events", content=body, headers={"Content-Type": "application/json"}
        )
        took = loop.time() - started
    finally:
        pinger.cancel()
    assert "noSuchField" in _status(reply, 400, 3)["message"]
    print(
        f"\n{len(body) / 2**20:.1f} MiB body refused after {took:.1f}s; {len(latencies)} pings"
        f" meanwhile, the slowest {max(latencies, default=0) * 1000:.0f}ms"
    )
    assert len(latencies) >= 3, (latencies, took)
    assert max(latencies) < took / 3, (max(latencies), took)


MULTIPART_FIELDS: dict[str, tuple[dict[str, str], str]] = {
    "nested source": ({"source": nested(FIELD_DEPTH)}, "nested"),
    "nested metadata": ({"metadata": nested(FIELD_DEPTH)}, "nested"),
    "metadata 40 deep": ({"metadata": nested(40)}, "nested"),
    "huge integer": ({"metadata": '{"n": ' + "7" * 5000 + "}"}, "digits"),
    "NaN metadata": ({"metadata": '{"n": NaN}'}, "NaN"),
    "Infinity in source": ({"source": '{"metadata": {"n": Infinity}}'}, "Infinity"),
    "lone surrogate": ({"source": '{"title": "\\udc80"}'}, "surrogate"),
}


@pytest.mark.parametrize("case", sorted(MULTIPART_FIELDS))
async def test_hostile_json_in_multipart_fields_is_400(http: httpx.AsyncClient, case: str) -> None:
    fields, word = MULTIPART_FIELDS[case]
    reply = await http.post(
        "/v1/documents", data=fields, files={"file": ("notes.txt", b"hello", "text/plain")}
    )
    message = _status(reply, 400, 3)["message"]
    assert word in message and "form field" in message, message
    await _healthy(http)


def _paths() -> dict[str, set[str]]:
    """Every path the gateway serves (an example of each) and the methods it takes there."""
    paths: dict[str, set[str]] = {}
    for rule in ROUTES:
        paths.setdefault(example_path(rule), set()).add(rule.method)
    for path, methods in LOCAL_ROUTES.items():
        paths[path] = set(methods)
    return paths


async def test_wrong_methods_are_405_with_the_paths_own_allow_everywhere(
    http: httpx.AsyncClient,
) -> None:
    paths = _paths()
    assert paths["/v1/status"] == {"GET", "HEAD"}
    for path, methods in paths.items():
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE", "PURGE"} - methods):
            reply = await http.request(method, path)
            _status(reply, 405, 12)
            allowed = set(reply.headers["allow"].split(", "))
            assert allowed == methods | {"OPTIONS"}, (method, path, allowed)
        reply = await http.options(path)
        assert reply.status_code == 204, (path, reply.text)
        assert set(reply.headers["allow"].split(", ")) == methods | {"OPTIONS"}, path
    _status(await http.put("/v1/no/such/thing"), 404, 5)
    _status(await http.options("/v1/no/such/thing"), 404, 5)
    _status(await http.get("/no-such-file.js"), 404, 5)


async def test_cors_preflight_offers_only_the_paths_methods(
    http: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    origin = gateway.settings.CORS_ORIGINS[0]
    for path, methods in _paths().items():
        for method in sorted(methods - {"HEAD"}):
            reply = await http.options(
                path, headers={"Origin": origin, "Access-Control-Request-Method": method}
            )
            assert reply.status_code == 200, (path, method, reply.text)
            offered = set(reply.headers["access-control-allow-methods"].split(", "))
            assert offered == methods | {"OPTIONS"}, (path, offered)
            assert reply.headers["access-control-allow-origin"] == origin
    refused = await http.options(
        "/v1/status", headers={"Origin": origin, "Access-Control-Request-Method": "DELETE"}
    )
    assert "method" in _status(refused, 400, 3)["message"]


async def test_an_exception_escaping_a_route_is_a_json_500_with_a_request_id(
    gateway: RunningGateway, http: httpx.AsyncClient
) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    # The real app and middleware, with one route that fails the way a bug would.
    app: Any = gateway.server.config.app
    app.router.routes.insert(0, Route("/v1/broken", broken, methods=["GET"]))
    try:
        reply = await http.get("/v1/broken", headers={"X-Request-Id": "req-broken-1"})
    finally:
        del app.router.routes[0]
    body = _status(reply, 500, 13)
    assert body["details"][0]["requestId"] == "req-broken-1"
    assert "req-broken-1" in body["message"] and "RuntimeError" not in body["message"]
    await _healthy(http)
