"""An UNAVAILABLE gRPC made itself (a frozen service's "Stream removed (ping timeout)", a closed
socket) names the service that cannot be reached, on HTTP and on the socket alike (one mapping,
`errors.from_rpc_error`), even when the channel still reads READY a moment after; one the
service sent (it carries the servicers' request id trailer) is passed on as it is."""

from __future__ import annotations

import grpc
from grpc.aio import AioRpcError, Metadata

from amelia_common.grpc_server import REQUEST_ID
from amelia_gateway.errors import from_rpc_error

ADDRESS = "127.0.0.1:50051"


def _error(
    details: str, *, sent: bool, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
) -> AioRpcError:
    trailers = Metadata((REQUEST_ID, "abc123")) if sent else Metadata()
    return AioRpcError(code, Metadata(), trailers, details)


def test_grpcs_own_unavailable_names_the_service_even_through_a_ready_channel() -> None:
    for reached in (True, False):
        error = from_rpc_error(
            _error("Stream removed (ping timeout)", sent=False), "EventService", ADDRESS, reached
        )
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert error.message == (
            f"the events service at {ADDRESS} is unavailable (Stream removed (ping timeout))"
        )
        assert error.http_status == 503


def test_replicas_behind_one_channel_are_named_as_one_of_them() -> None:
    """QA s22 F12: one events replica died and the notice named both as unavailable."""
    replicas = f"{ADDRESS},127.0.0.1:50054"
    error = from_rpc_error(_error("Socket closed", sent=False), "EventService", replicas, True)
    assert error.message == (
        f"a replica of the events service (one of {replicas}) is unavailable (Socket closed)"
    )


def test_an_unavailable_the_service_sent_is_passed_on() -> None:
    said = "NATS is unavailable: no connection; try again shortly"
    error = from_rpc_error(_error(said, sent=True), "EventService", ADDRESS, True)
    assert error.message == said
    # Through a channel that is down it cannot be the service's.
    error = from_rpc_error(_error(said, sent=True), "EventService", ADDRESS, False)
    assert error.message.startswith(f"the events service at {ADDRESS} is unavailable (")


def test_other_codes_are_passed_on() -> None:
    error = from_rpc_error(
        _error("after_sequence 9 is beyond", sent=False, code=grpc.StatusCode.OUT_OF_RANGE),
        "EventService",
        ADDRESS,
        True,
    )
    assert (error.code, error.message, error.http_status) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "after_sequence 9 is beyond",
        400,
    )


def test_advice_only_a_grpc_client_can_follow_is_said_the_gateways_way() -> None:
    """WaitRun's advice to follow the run with StreamRun, out of time or refused, is the
    gateway's route over HTTP (and the socket's run subscription)."""
    follow = "GET /v1/runs/{id}:stream (or a run subscription on /ws)"
    cases = (
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "runs/1 is still RUNNING after 30 s of waiting (the run goes on; wait again, or"
            " follow it with StreamRun)",
            f"runs/1 is still RUNNING after 30 s of waiting (the run goes on; wait again, or"
            f" follow it with {follow})",
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "timeout must be more than 0 s and at most 600 s, got 900 s (wait again for longer,"
            " or follow the run with StreamRun)",
            "timeout must be more than 0 s and at most 600 s, got 900 s (wait again for longer,"
            f" or follow the run with {follow})",
        ),
    )
    for code, said, meant in cases:
        error = from_rpc_error(_error(said, sent=True, code=code), "AgentService", ADDRESS, True)
        assert error.message == meant
