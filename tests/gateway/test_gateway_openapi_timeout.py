"""The served OpenAPI document says what `X-Request-Timeout` the gateway takes.

Since 0fb1eca a deadline over 3600 s is a 400 (it was cut to 3600 before), but /openapi.json
still described the header as any positive number: a client generated from it would send values
the gateway refuses. The schema now carries the same bounds the gateway enforces.
"""

from __future__ import annotations

from typing import Any

import httpx


async def _timeout_schema(http: httpx.AsyncClient) -> dict[str, Any]:
    reply = await http.get("/openapi.json")
    assert reply.status_code == 200, reply.text
    parameter = reply.json()["components"]["parameters"]["RequestTimeout"]
    assert parameter["name"] == "X-Request-Timeout" and parameter["in"] == "header"
    schema: dict[str, Any] = parameter["schema"]
    return schema


async def test_openapi_bounds_x_request_timeout_as_the_gateway_does(
    http: httpx.AsyncClient,
) -> None:
    schema = await _timeout_schema(http)
    assert schema["type"] == "number"
    # OpenAPI 3.0.3: exclusiveMinimum is a boolean qualifying `minimum`.
    assert (schema["minimum"], schema["exclusiveMinimum"]) == (0, True)
    assert schema["maximum"] == 3600

    # The documented bounds are the enforced ones: the maximum is taken, past it is a 400.
    at_most = await http.get(
        "/v1/events", params={"pageSize": 1}, headers={"X-Request-Timeout": "3600"}
    )
    assert at_most.status_code == 200, at_most.text
    for value in ("3600.5", "0", "-1"):
        refused = await http.get(
            "/v1/events", params={"pageSize": 1}, headers={"X-Request-Timeout": value}
        )
        assert refused.status_code == 400, (value, refused.text)
        assert refused.json()["code"] == 3
