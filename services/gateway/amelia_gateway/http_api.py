"""`/v1/...`: HTTP/JSON for every unary RPC, newline-delimited JSON for server-streaming ones.

One endpoint serves the whole route table: match the rule, check the token, build the request
message (body, query, path), call the service with the client's deadline and a request id, and
answer proto JSON, or the google.rpc.Status JSON of the error with grpc-gateway's HTTP status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from amelia.v1 import agents_pb2
from amelia_common.grpc_client import reissue_while_unavailable
from amelia_common.logging import get_logger
from amelia_gateway import uploads
from amelia_gateway.errors import (
    GatewayError,
    error_response,
    internal,
)
from amelia_gateway.requests import (
    NDJSON,
    check_json_body_type,
    client_timeout,
    gateway_of,
    is_upload,
    read_body,
    refuse_encoded_body,
    request_id,
    require_token,
)
from amelia_gateway.routes import MAX_WAIT_SECONDS, Match
from amelia_gateway.state import Gateway
from amelia_gateway.transcode import build_request, parse_json_body, to_json_bytes, to_json_text
from amelia_gateway.upstream import (
    Upstream,
    message_class,
    settle,
    waiting_for,
    watch_opening,
)

log = get_logger("amelia.gateway.http")

# How long a stream route waits for the upstream's first answer before it commits to 200: errors
# found while opening the stream (bad filter, unknown run) still get their own HTTP status.
STREAM_OPEN_WAIT = 0.5
# While the upstream is not connected, a stream waits for its verdict (the call fails once the
# channel's retries are spent, about 1.5 s, see grpc_client.RETRY_POLICY) up to this long, so a
# service that is down is a 503 too, not a 200 whose body says so.
STREAM_CONNECT_WAIT = 10.0
# A resumable stream (StreamRun) the service drops is reopened after its last sequence, after a
# pause doubling up to MAX_RESUME_BACKOFF, for an outage of up to STREAM_RESUME_SECONDS (or the
# client's deadline): a replica's death or a restart is not seen. The supervisor restarts a
# service at once, but a loaded machine took 65 s from SIGTERM to serving again (QA, session 18).
RESUME_BACKOFF = 0.25
MAX_RESUME_BACKOFF = 2.0
STREAM_RESUME_SECONDS = 120.0


def metadata(rid: str) -> tuple[tuple[str, str], ...]:
    return (("x-request-id", rid),)


async def endpoint(request: Request) -> Response:
    """Every `/v1/...` route of the table."""
    gateway = gateway_of(request)
    rid = request_id(request)
    gateway.counters["httpRequests"] += 1
    try:
        # The path as sent (percent-decoded), not `request.url.path`: Starlette rebuilds that
        # through urlsplit, which drops tabs, CRs and LFs, so `threads/<uuid>%0A` reached the
        # thread instead of being refused as another spelling of its name.
        path = request.scope["path"]
        found = gateway.table.match(request.method, path)
        if found is None:
            raise GatewayError(grpc.StatusCode.NOT_FOUND, f"no route for {request.method} {path}")
        require_token(gateway, request)
        if found.rule.body or found.rule.uploads:
            refuse_encoded_body(request)
        if found.rule.uploads and is_upload(request):
            return await uploads.upload(gateway, request, rid)
        message = await _request_message(gateway, request, found)
        if found.rule.server_streaming:
            return await _stream(gateway, request, found, message, rid)
        return await _unary(gateway, request, found, message, rid)
    except GatewayError as exc:
        return error_response(exc, rid)


async def _request_message(gateway: Gateway, request: Request, found: Match) -> Any:
    rule = found.rule
    raw = b""
    query = list(request.query_params.multi_items())
    if rule.body:
        check_json_body_type(request)
        raw = await read_body(request, gateway.settings.MAX_REQUEST_BYTES)

    def transcode() -> Any:
        return build_request(
            message_class(rule.input),
            body=parse_json_body(raw) if rule.body else None,
            body_field=rule.body,
            query=query,
            path=rule.bound_fields(found.variables),
        )

    # On a worker thread: turning megabytes of JSON into a message takes seconds of pure
    # Python, which on the event loop would stall every other request and socket meanwhile.
    return await asyncio.to_thread(transcode)


async def _unary(
    gateway: Gateway, request: Request, found: Match, message: Any, rid: str
) -> Response:
    rule = found.rule
    timeout = client_timeout(request, rule.deadline or gateway.settings.GATEWAY_TIMEOUT_SECONDS)
    call = gateway.upstreams.callable(rule.service, rule.rpc)
    upstream = gateway.upstreams[rule.service]
    try:
        if rule.waits:
            response = await _wait(call, message, timeout, rid, upstream.name)
        else:
            response = await call(message, timeout=timeout, metadata=metadata(rid))
    except grpc.aio.AioRpcError as exc:
        raise upstream.error(exc, rule.service) from None
    content = await asyncio.to_thread(to_json_bytes, response)  # a big page: as above
    return Response(content, media_type="application/json", headers={"X-Request-Id": rid})


async def _wait(call: Any, message: Any, timeout: float, rid: str, service: str) -> Any:
    """WaitRun until the run's end or the wait's own timeout, sent again while the service is
    UNAVAILABLE (the replica serving it died, the only one restarts) with what is left of the
    call's deadline. Every attempt carries the wait's `start_time` (the client's, else when the
    gateway got it): the service counts the timeout and its message from it, so the attempts
    make one wait of the client's length."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    asked = message.timeout.ToNanoseconds() / 1e9 if message.HasField("timeout") else 0.0
    wait_end = start + min(asked or MAX_WAIT_SECONDS, timeout)
    call_end = start + timeout
    if not message.HasField("start_time"):
        message.start_time.GetCurrentTime()

    async def attempt(_: float) -> Any:
        left = max(call_end - loop.time(), 0.001)
        return await call(message, timeout=left, metadata=metadata(rid))

    return await reissue_while_unavailable(attempt, wait_end - start, service)


async def _answered_while_opening(
    call: Any,
    first: asyncio.Future[Any],
    opened: asyncio.Future[Any],
    upstream: Upstream,
    headers_within: float,
) -> bool:
    """Whether the stream answered (a message, its end or an error) before it counts as open.

    It counts as open once the service sent its headers (`opened`, a call that did not fail
    with them). A service that sends none until its first message (`headers_within` 0) counts
    as opening it STREAM_OPEN_WAIT after its upstream is connected, at most STREAM_CONNECT_WAIT
    in all; one that sends them as soon as the stream is open is waited for up to
    `headers_within` after that (its own bound for opening), unless its health says a dependency
    it waits for is down (a 503 naming it, `_stream`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_CONNECT_WAIT
    connected_at = loop.time() if upstream.connected() else None
    checked = False
    while not first.done():
        now = loop.time()
        if opened.done() and not call.done():
            return False  # the service opened the stream
        if connected_at is None and upstream.connected():
            connected_at = now
        if connected_at is None:
            if now >= deadline:
                return False
        elif now - connected_at >= STREAM_OPEN_WAIT:
            if now - connected_at >= STREAM_OPEN_WAIT + headers_within:
                return False
            if not checked:
                checked = True
                if dependency := await upstream.down_dependency():
                    call.cancel()
                    raise waiting_for(upstream, dependency)
        await asyncio.wait({first, opened} if not opened.done() else {first}, timeout=0.05)
    return True


async def _stream(
    gateway: Gateway, request: Request, found: Match, message: Any, rid: str
) -> Response:
    """A server-streaming RPC as NDJSON: `{"result": {...}}` per message, `{"error": {...}}` last.

    The stream has no deadline unless the client sends one. Errors the service reports while
    the stream opens are answered with their HTTP status; later ones as a final error line.
    """
    rule = found.rule
    upstream = gateway.upstreams[rule.service]
    timeout = client_timeout(request, 0.0) or None
    _admit_stream(gateway)
    call = gateway.upstreams.callable(rule.service, rule.rpc)(
        message, timeout=timeout, metadata=metadata(rid)
    )
    first = asyncio.ensure_future(call.read())
    opened = asyncio.ensure_future(call.initial_metadata())
    gateway.http_streams_opening += 1
    try:
        if rule.resumes_as_run:
            # A create (CreateAndStreamRun): its answer — the run, or why not — is awaited as
            # `POST /v1/runs`'s is, and makes the status; a 200 never carries a failed create,
            # and a create is never cut off for a dependency it is waiting out.
            wait = client_timeout(request, gateway.settings.GATEWAY_TIMEOUT_SECONDS)
            if not (await asyncio.wait({first}, timeout=wait))[0]:
                call.cancel()
                raise GatewayError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"AgentService.{rule.rpc} did not answer within {wait:g} s; the run may have been "
                    "created: send the request again with the same requestId to stream it",
                )
            try:
                first.result()
            except grpc.aio.AioRpcError as exc:
                call.cancel()
                raise upstream.error(exc, rule.service) from None
        elif await _answered_while_opening(
            call,
            first,
            opened,
            upstream,
            gateway.settings.EVENTS_PUBLISH_TIMEOUT_SECONDS + STREAM_OPEN_WAIT
            if rule.headers_when_open
            else 0.0,
        ):
            try:
                first.result()
            except grpc.aio.AioRpcError as exc:
                call.cancel()
                raise upstream.error(exc, rule.service) from None
        elif not opened.done() and (dependency := await upstream.down_dependency()):
            # The service waits for a dependency before it opens the stream (the events
            # service for NATS) and says nothing meanwhile: a 503 naming it, not a silent 200.
            call.cancel()
            raise waiting_for(upstream, dependency)
    finally:
        settle(opened)
        gateway.http_streams_opening -= 1
    gateway.http_streams.add(call)
    down: list[str] = []

    def dependency_down(dependency: str) -> None:
        down.append(dependency)
        call.cancel()  # the last line says why

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout if timeout else None

    run_name = ""  # the run a CreateAndStreamRun made, named by its first message

    def reopen(last: int) -> Any:
        """The stream again, after the last sequence sent, with what is left of its deadline:
        a created run's stream goes on as StreamRun of that run."""
        nonlocal call
        call.cancel()
        gateway.http_streams.discard(call)
        rpc, again = rule.rpc, message
        if rule.resumes_as_run:
            rpc = "StreamRun"
            again = agents_pb2.StreamRunRequest(
                name=run_name,
                after_sequence=last,
                max_events_per_message=message.max_events_per_message,
            )
        else:
            message.after_sequence = last
        left = max(end - loop.time(), 0.001) if end is not None else None
        call = gateway.upstreams.callable(rule.service, rpc)(
            again, timeout=left, metadata=metadata(rid)
        )
        gateway.http_streams.add(call)
        return call

    async def lines() -> AsyncIterator[str]:
        nonlocal run_name
        watch = asyncio.create_task(watch_opening(call, upstream, dependency_down))
        try:
            item = await first
            last = int(getattr(message, "after_sequence", 0))
            pause = RESUME_BACKOFF
            broke_at: float | None = None
            while True:
                try:
                    if item is None:
                        item = await reopen(last).read()
                    while item is not grpc.aio.EOF:
                        if rule.resumes_as_run and not run_name and item.HasField("run"):
                            run_name = item.run.name
                        if rule.resumes:
                            last = _last_sequence(item, last)
                            broke_at, pause = None, RESUME_BACKOFF
                        yield '{"result":' + to_json_text(item) + "}\n"
                        item = await call.read()
                    break
                except grpc.aio.AioRpcError as exc:
                    now = loop.time()
                    broke_at = now if broke_at is None else broke_at
                    if not (
                        rule.resumes
                        and (run_name or not rule.resumes_as_run)
                        and exc.code() == grpc.StatusCode.UNAVAILABLE
                        and not gateway.stopping.is_set()
                        and now - broke_at + pause < STREAM_RESUME_SECONDS
                        and (end is None or now + pause < end)
                    ):
                        raise
                    log.warning(
                        "stream dropped; resuming", rpc=rule.rpc, after=last, error=exc.details()
                    )
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_RESUME_BACKOFF)
                item = None
        except grpc.aio.AioRpcError as exc:
            if gateway.stopping.is_set():
                error = GatewayError(grpc.StatusCode.UNAVAILABLE, "server shutting down")
            else:
                error = upstream.error(exc, rule.service)
            yield '{"error":' + _json(error.body(rid)) + "}\n"
        except Exception:  # the status line is sent: the last line says what happened
            log.exception("stream failed", rpc=rule.rpc, request_id=rid)
            yield '{"error":' + _json(internal(f"request id {rid}").body(rid)) + "}\n"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if down and not (task is not None and task.cancelling()):
                # The service never opened the stream: it waits for a dependency that is down.
                yield '{"error":' + _json(waiting_for(upstream, down[0]).body(rid)) + "}\n"
                return
            if (task is not None and task.cancelling()) or not gateway.stopping.is_set():
                raise  # the client went away: nothing to write to
            # The gateway is draining and cancelled the call: say so, then end the body.
            error = GatewayError(grpc.StatusCode.UNAVAILABLE, "server shutting down")
            yield '{"error":' + _json(error.body(rid)) + "}\n"
        finally:
            watch.cancel()
            call.cancel()
            gateway.http_streams.discard(call)

    def release() -> None:
        call.cancel()
        gateway.http_streams.discard(call)

    return _UpstreamStream(
        lines(),
        release,
        media_type=NDJSON,
        headers={"X-Request-Id": rid, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _UpstreamStream(StreamingResponse):
    """An NDJSON body that lets its upstream call go however the response ends. The body's
    generator does so in its `finally`, but only once it has started: a response cancelled
    before its first step (Starlette cancels it when it sees the client gone) would leave the
    call open upstream and counted against GATEWAY_MAX_HTTP_STREAMS for good."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _admit_stream(gateway: Gateway) -> None:
    """Refuse an NDJSON stream past GATEWAY_MAX_HTTP_STREAMS (open, or being opened)."""
    limit = gateway.settings.GATEWAY_MAX_HTTP_STREAMS
    if len(gateway.http_streams) + gateway.http_streams_opening >= limit:
        gateway.counters["httpRefusedStreams"] += 1
        raise GatewayError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"too many streams: this gateway serves {limit} NDJSON streams at once "
            "(GATEWAY_MAX_HTTP_STREAMS); close one and try again, or follow events over a "
            "WebSocket, whose subscriptions share one stream per filter",
        )


def _last_sequence(item: Any, last: int) -> int:
    """The sequence of the last event in a StreamRun message (`event`, or `events` batched)."""
    if item.events:
        return int(item.events[-1].sequence)
    return int(item.event.sequence) or last


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
