"""gRPC status -> HTTP status, and the google.rpc.Status-shaped JSON body every error carries.

The mapping is grpc-gateway's (`runtime.HTTPStatusFromCode`), so a client written against any
grpc-gateway front door reads our errors the same way. Errors the gateway finds itself (bad JSON,
an unknown route, a body too large) use the same body with the closest gRPC code. A service's
own google.rpc.Status details (its `grpc-status-details-bin` trailer: ErrorInfo, RetryInfo) are
passed on in the body's `details` as proto JSON, after the gateway's RequestInfo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import JSONResponse

from amelia_common.errors import shorten_echoes
from amelia_common.grpc_client import STATUS_DETAILS
from amelia_common.grpc_server import from_servicer

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

REQUEST_INFO_TYPE = "type.googleapis.com/google.rpc.RequestInfo"


def code_number(code: grpc.StatusCode) -> int:
    """The numeric gRPC code (`grpc.StatusCode.NOT_FOUND` -> 5)."""
    number: int = code.value[0]
    return number


class GatewayError(Exception):
    """An error to answer with: a gRPC code, a message for people, optionally an HTTP override.

    `http_status` overrides the mapped status where HTTP has a more precise one the gRPC code
    cannot express (413 body too large, 405 wrong method, 415 wrong content type). `details`:
    google.rpc.Status details as proto JSON (a service's, `service_details`), written after
    the gateway's RequestInfo.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        http_status: int | None = None,
        headers: Mapping[str, str] | None = None,
        service: str = "",
        details: Sequence[dict[str, Any]] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or HTTP_STATUS.get(code, 500)
        self.headers = dict(headers or {})
        self.service = service
        self.details = list(details)

    def body(self, request_id: str = "") -> dict[str, Any]:
        return status_body(self.code, self.message, request_id, self.details)


MAX_MESSAGE = 300


def cut(text: str, most: int = MAX_MESSAGE) -> str:
    """`text` cut to `most` characters by leaving out its middle: an error message quoting a
    client's value (which may be thousands of characters long) keeps its start and its end,
    what was wrong and why."""
    if len(text) <= most:
        return text
    half = (most - 1) // 2
    return text[:half] + "…" + text[len(text) - (most - 1 - half) :]


def invalid(message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message)


def internal(reference: str) -> GatewayError:
    """A failure of the gateway itself: details go to its log only, under `reference`."""
    return GatewayError(
        grpc.StatusCode.INTERNAL,
        f"internal error in the gateway ({reference}); the gateway log has the details",
    )


def status_body(
    code: grpc.StatusCode,
    message: str,
    request_id: str = "",
    details: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """`{"code": 5, "message": "...", "details": [...]}` (google.rpc.Status as proto JSON):
    the gateway's RequestInfo (`request_id`, the id its client sees), then `details`.
    Every error the gateway answers is written here: a long value the message quotes is
    shortened (`amelia_common.errors.shorten_echoes`, as the services do for gRPC)."""
    written: list[dict[str, Any]] = []
    if request_id:
        written.append({"@type": REQUEST_INFO_TYPE, "requestId": request_id})
    written.extend(details)
    return {"code": code_number(code), "message": shorten_echoes(message), "details": written}


def service_details(exc: grpc.aio.AioRpcError) -> list[dict[str, Any]]:
    """The details of the google.rpc.Status a service sent with `exc` (its
    `grpc-status-details-bin` trailer, `amelia_common.grpc_server.status_details`) as proto
    JSON with their "@type", as grpc-gateway writes them: ErrorInfo, RetryInfo, … The service's
    RequestInfo is left out (the body has the gateway's: the id its client sees, which the
    gateway sends the service as `x-request-id`), and so is a type the gateway cannot read, or
    a trailer whose code is not the call's. [] when there is none."""
    raw = next((v for k, v in exc.trailing_metadata() or () if k == STATUS_DETAILS), None)
    if not isinstance(raw, bytes):
        return []
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return []
    if status.code != code_number(exc.code()):
        return []
    details: list[dict[str, Any]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            continue
        try:
            details.append(json_format.MessageToDict(detail))
        except (TypeError, json_format.Error):  # a type not in this process's descriptor pool
            continue
    return details


_SERVICE_NAMES = {
    "EventService": "events",
    "AgentService": "agents",
    "RagService": "rag",
    "GitService": "agents",  # served by the agents service
    "CronService": "agents",  # served by the agents service
}


# Advice in a service's message that only a gRPC client can follow, by service, and what a client
# of the gateway does instead. The rag service says it to IngestDocument's callers; over HTTP
# that is a JSON `POST /v1/documents`, whose larger sibling is the same route with a file. The
# agents service tells a WaitRun that ran out to follow the run with StreamRun: over HTTP, its
# NDJSON route or a run subscription on the socket.
FOLLOW_OVER_HTTP = "GET /v1/runs/{id}:stream (or a run subscription on /ws)"
_GRPC_ADVICE = {
    "AgentService": (
        ("follow it with StreamRun", f"follow it with {FOLLOW_OVER_HTTP}"),
        ("follow the run with StreamRun", f"follow the run with {FOLLOW_OVER_HTTP}"),
    ),
    "RagService": (
        (
            "send larger files with UploadDocument",
            "over HTTP, send larger files to the same route as a file: multipart/form-data "
            "(curl -F file=@notes.pdf) or the raw body (curl -H 'Content-Type: application/pdf' "
            "--data-binary @notes.pdf), up to MAX_DOCUMENT_BYTES",
        ),
    ),
}


def for_gateway_clients(message: str, service: str) -> str:
    """`message` with advice a gateway client cannot follow (an RPC it has no route for)
    replaced by what it does instead. The message is the service's own (a change to its words
    shows in tests/gateway/test_gateway_uploads.py)."""
    for grpc_advice, advice in _GRPC_ADVICE.get(service, ()):
        if grpc_advice in message:
            message = message.replace(grpc_advice, advice)
    return message


def from_rpc_error(
    exc: grpc.aio.AioRpcError, service: str, address: str, reached: bool
) -> GatewayError:
    """An upstream failure as a GatewayError, with a message that names the service.

    `reached`: whether the channel to the service is up (READY) now that the call failed. An
    UNAVAILABLE the service sent names its own dependency and is passed on as it is; it comes
    through a READY channel with the request id every status of the mesh's servicers carries
    (`amelia_common.grpc_server`). Any other UNAVAILABLE is gRPC's own, whatever its words
    ("failed to connect to all addresses", "Socket closed", "Stream removed (ping timeout)" from
    a frozen service, whose channel still reads READY a moment after): the service itself cannot
    be reached, and which of the mesh's services that is, is what a person needs to know.
    """
    code = exc.code()
    message = exc.details() or code.name
    name = _SERVICE_NAMES.get(service, service)
    if code == grpc.StatusCode.UNAVAILABLE and not (reached and from_servicer(exc)):
        message = f"{_where(name, address)} is unavailable ({message})"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED and message in ("Deadline Exceeded", ""):
        message = f"the {name} service did not answer before the deadline"
    else:
        message = for_gateway_clients(message, service)
    return GatewayError(code, message, service=service, details=service_details(exc))


def _where(name: str, address: str) -> str:
    """The service a call went to: at its address, or — replicas behind one channel, which
    does not say which one failed — one of them (QA s22: "the events service at A,B is
    unavailable" while B served the whole time)."""
    if "," in address:
        return f"a replica of the {name} service (one of {address})"
    return f"the {name} service at {address}"


def error_response(exc: GatewayError, request_id: str = "") -> JSONResponse:
    headers = dict(exc.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(exc.body(request_id), status_code=exc.http_status, headers=headers)
