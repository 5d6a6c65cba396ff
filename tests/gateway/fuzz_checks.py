"""schemathesis checks of the gateway's error contract (loaded with SCHEMATHESIS_HOOKS).

- `server_errors_are_named_outages`: no 5xx, except a 503 that names what is down (a service,
  PostgreSQL, NATS): a dependency being down is the one server error a client may see.
- `errors_are_google_rpc_status`: every 4xx/5xx is `application/json` google.rpc.Status whose
  `code` is the gRPC code grpc-gateway maps to that HTTP status, with a message and the request
  id in its details.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis

# HTTP status -> the gRPC codes grpc-gateway answers with it (see amelia_gateway/errors.py).
CODES_FOR_STATUS: dict[int, set[int]] = {
    400: {3, 9, 11},
    401: {16},
    403: {7},
    404: {5},
    405: {12},
    409: {6, 10},
    413: {8},
    415: {3},
    429: {8},
    499: {1},
    500: {2, 13, 15},
    501: {12},
    503: {14},
    504: {4},
}
OUTAGE_WORDS = ("service at", "PostgreSQL", "NATS", "unavailable")


def _status_body(response: Any) -> dict[str, Any]:
    media = response.headers.get("content-type", [""])
    media = media[0] if isinstance(media, list) else media
    assert media.split(";")[0].strip() == "application/json", f"error as {media!r}, not JSON"
    body = json.loads(response.content)
    assert isinstance(body, dict), body
    return body


@schemathesis.check
def server_errors_are_named_outages(ctx: Any, response: Any, case: Any) -> bool | None:
    status = response.status_code
    if status < 500:
        return None
    message = str(_status_body(response).get("message", ""))
    if status == 503 and any(word in message for word in OUTAGE_WORDS):
        return None
    raise AssertionError(f"server error {status}: {message}")


@schemathesis.check
def errors_are_google_rpc_status(ctx: Any, response: Any, case: Any) -> bool | None:
    status = response.status_code
    if status < 400:
        return None
    body = _status_body(response)
    code, message, details = body.get("code"), body.get("message"), body.get("details")
    assert code in CODES_FOR_STATUS.get(status, set()), f"HTTP {status} with gRPC code {code}"
    assert isinstance(message, str) and message, f"no message: {body}"
    assert isinstance(details, list), f"details is not a list: {body}"
    infos = [d for d in details if d.get("@type", "").endswith("google.rpc.RequestInfo")]
    assert infos and infos[0].get("requestId"), f"no request id: {body}"
    return None
