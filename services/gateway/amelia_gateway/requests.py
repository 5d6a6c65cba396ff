"""What every HTTP handler of the gateway reads from a request, in one place.

The gateway state, the request id, the token check, the client's deadline, a bounded body and the
kind of content: used by the route table's endpoint (`http_api`), uploads and `/v1/status`.
"""

from __future__ import annotations

import re

import grpc
from starlette.requests import Request

from amelia_common.auth import token_ok
from amelia_gateway import auth, middleware
from amelia_gateway.errors import GatewayError, cut, invalid
from amelia_gateway.state import Gateway

NDJSON = "application/x-ndjson"
MAX_CLIENT_TIMEOUT = 3600.0

_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def request_id(request: Request) -> str:
    return middleware.request_id(request.scope)


def require_token(gateway: Gateway, request: Request) -> None:
    if not token_ok(gateway.token, auth.header_token(request.headers)):
        raise GatewayError(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or wrong API token: send 'Authorization: Bearer <AMELIA_API_TOKEN>'"
            " or 'X-API-Key: <AMELIA_API_TOKEN>'",
            headers={"WWW-Authenticate": 'Bearer realm="amelia"'},
        )


def client_timeout(request: Request, default: float) -> float:
    """The deadline the client asked for (`grpc-timeout` or `X-Request-Timeout`), or `default`.
    More than MAX_CLIENT_TIMEOUT (`inf`, `1e308`, `3601`, `2H`) is refused, as the docs say, not
    cut to it: a client that asked for two hours would otherwise be cut off after one."""
    value = request.headers.get("grpc-timeout")
    if value is not None:
        header = "grpc-timeout"
        match = _GRPC_TIMEOUT.match(value.strip())
        if not match:
            raise invalid(f"grpc-timeout header {cut(value, 40)!r} is not like '30S' or '500m'")
        seconds = int(match.group(1)) * _GRPC_UNITS[match.group(2)]
    else:
        header = "X-Request-Timeout"
        value = request.headers.get("x-request-timeout")
        if value is None:
            return default
        try:
            seconds = float(value)
        except ValueError:
            raise invalid(
                f"X-Request-Timeout header {cut(value, 40)!r} is not a number of seconds"
            ) from None
        if seconds != seconds:  # NaN
            raise invalid("X-Request-Timeout header must be a number of seconds")
    if seconds <= 0:
        raise invalid("the request timeout must be positive")
    if seconds > MAX_CLIENT_TIMEOUT:
        raise invalid(
            f"{header} header {cut(value, 40)!r} is more than {MAX_CLIENT_TIMEOUT:g} seconds,"
            " the longest deadline the gateway takes"
        )
    return seconds


def too_large(
    limit: int, what: str = "request body", setting: str = "MAX_REQUEST_BYTES"
) -> GatewayError:
    """413 for a body over its limit, naming the setting that sets it."""
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{what} is larger than {limit} bytes ({setting})",
        http_status=413,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def refuse_encoded_body(request: Request) -> None:
    """415 for a body sent with a Content-Encoding (gzip, …): the gateway reads bodies as they
    are sent, as grpc-gateway does, rather than take compressed bytes for JSON text or a
    document (identity, or no header, is the body as it is)."""
    encoding = request.headers.get("content-encoding", "").strip()
    if encoding and encoding.lower() != "identity":
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Content-Encoding {cut(encoding, 40)!r} is not supported: send the request body "
            "uncompressed, without a Content-Encoding header",
            http_status=415,
        )


def check_json_body_type(request: Request) -> None:
    """415 for a body on a JSON route that is not JSON text in UTF-8: another media type
    (`text/plain`), or JSON in another charset (`application/json; charset=latin-1`, which was
    read as UTF-8 all the same). No Content-Type is read as JSON, as grpc-gateway does (its
    default marshaler); `charset=utf-8` (any case, `utf8`) is the one charset taken."""
    content_type = request.headers.get("content-type", "application/json")
    if not is_json(content_type):
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"send the request as application/json, not {cut(content_type, 60)!r}",
            http_status=415,
        )
    for parameter in content_type.split(";")[1:]:
        name, _, charset = parameter.partition("=")
        charset = charset.strip().strip('"')
        if name.strip().lower() == "charset" and charset.lower() not in ("utf-8", "utf8"):
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"charset {cut(charset, 40)!r} is not supported: send the JSON body as UTF-8"
                " (application/json, or application/json; charset=utf-8)",
                http_status=415,
            )


def is_json(content_type: str) -> bool:
    """`application/json` or any `+json` media type, whatever its parameters."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def is_upload(request: Request) -> bool:
    """A body that is not JSON: a document to stream to UploadDocument (no type counts as JSON)."""
    return not is_json(request.headers.get("content-type", "application/json"))
