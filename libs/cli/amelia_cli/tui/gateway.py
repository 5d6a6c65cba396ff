"""The gateway's public API as the TUI uses it: HTTP/JSON calls and one resumable WebSocket.

`GatewayApi` calls `/v1/...` and turns a `google.rpc.Status` error body into `ApiError`, whose
message is the service's own sentence. `EventSocket` keeps one `/ws` connection alive: it
reconnects with backoff by itself and subscribes again with `since` = the last sequence each
subscription delivered, dropping anything at or before it, so a handler sees every event once,
in order, across gateway restarts (the protocol of docs/gateway.md; the dashboard's ws.js does
the same in a browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from amelia_cli.client import UNREACHED_HINT

GRPC_CODES = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
]
CLOSE_UNAUTHORIZED = 4401
BACKOFF_START = 0.25
BACKOFF_MAX = 5.0
SEARCH_TIMEOUT = 120.0
# Sent once more when the connection closed before an answer (see `GatewayApi.call`).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CLOSED_BEFORE_ANSWER = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class ApiError(Exception):
    """A call the gateway refused or could not make, with the message a person reads."""

    def __init__(
        self, http_status: int, body: Any, url: str = "", reason: str = "", advice: str = ""
    ) -> None:
        body = body if isinstance(body, dict) else {}
        number = body.get("code")
        self.http_status = http_status
        self.code = GRPC_CODES[number] if isinstance(number, int) and number < 17 else ""
        if body.get("message"):
            message = str(body["message"])
        elif http_status:
            message = f"the gateway answered HTTP {http_status}"
        else:
            # As a gRPC command says a service it cannot reach (`client.unreached`).
            self.code = "UNAVAILABLE"
            message = f"the gateway at {url} is not answering ({reason}){advice}"
        super().__init__(message)


def run_id(name: str) -> str:
    """`runs/abc` (or `threads/abc`) → `abc`, for paths."""
    return quote(name.rsplit("/", 1)[-1], safe="")


class GatewayApi:
    """The unary `/v1/...` routes the TUI needs (proto JSON in and out)."""

    def __init__(self, url: str, token: str = "", timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        params = {k: v for k, v in (query or {}).items() if v not in (None, "", [])}
        # A kept-alive connection the gateway closed as idle (uvicorn's keep-alive timeout,
        # 5 s) just as this request went out on it fails before any answer: "Server
        # disconnected without sending a response" (QA s26: a false "is the mesh running?"
        # while the gateway was fine). A request that may be sent twice is sent once more, on
        # a new connection: a GET, or a POST whose requestId the service takes once.
        again = method in SAFE_METHODS or (isinstance(body, dict) and bool(body.get("requestId")))
        for attempt in (1, 2):
            try:
                response = await self.http.request(
                    method,
                    path,
                    params=params,
                    json=body if body is not None else None,
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
                )
                break
            except httpx.TimeoutException:
                seconds = self.http.timeout.read if timeout is None else timeout
                raise ApiError(
                    0, None, self.url, f"no answer within {seconds:.0f} s: is it overloaded?"
                ) from None
            except httpx.HTTPError as exc:
                if attempt == 1 and again and isinstance(exc, CLOSED_BEFORE_ANSWER):
                    continue
                raise ApiError(
                    0,
                    None,
                    self.url,
                    str(exc) or type(exc).__name__,
                    UNREACHED_HINT,
                ) from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code >= 400:
            raise ApiError(response.status_code, payload, self.url)
        return payload if isinstance(payload, dict) else {}

    async def list_runs(
        self,
        *,
        statuses: list[str] | None = None,
        workflow: str = "",
        agent: str = "",
        thread: str = "",
        page_size: int = 50,
    ) -> list[dict[str, Any]]:
        query = {
            "pageSize": page_size,
            "statuses": statuses or [],
            "workflow": workflow,
            "agent": agent,
            "thread": thread,
        }
        reply = await self.call("GET", "/v1/runs", query=query)
        return list(reply.get("runs", []))

    async def get_run(self, name: str) -> dict[str, Any]:
        return dict((await self.call("GET", f"/v1/runs/{run_id(name)}")).get("run", {}))

    async def create_run(self, run: dict[str, Any], request_id: str) -> dict[str, Any]:
        reply = await self.call("POST", "/v1/runs", body={"run": run, "requestId": request_id})
        return dict(reply.get("run", {}))

    async def cancel_run(self, name: str, reason: str) -> dict[str, Any]:
        reply = await self.call("POST", f"/v1/runs/{run_id(name)}:cancel", body={"reason": reason})
        return dict(reply.get("run", {}))

    async def resume_run(self, name: str, answer: Any, request_id: str) -> dict[str, Any]:
        body = {"answer": answer, "requestId": request_id}
        reply = await self.call("POST", f"/v1/runs/{run_id(name)}:resume", body=body)
        return dict(reply.get("run", {}))

    async def list_threads(
        self, page_size: int, page_token: str = "", status: str = ""
    ) -> dict[str, Any]:
        """A page of threads, most recently active first (only those with `status`, if given):
        `threads`, `nextPageToken`."""
        query = {
            "pageSize": page_size,
            "pageToken": page_token,
            "orderBy": "update_time desc",
            "status": status,
        }
        return await self.call("GET", "/v1/threads", query=query)

    async def get_thread(self, thread: str) -> dict[str, Any]:
        return dict((await self.call("GET", f"/v1/threads/{run_id(thread)}")).get("thread", {}))

    async def update_thread_metadata(self, thread: str, patch: dict[str, Any]) -> dict[str, Any]:
        """UpdateThread: `patch`'s keys merged into the metadata, a key given None removed."""
        body = {"thread": {"metadata": patch}}
        reply = await self.call("PATCH", f"/v1/threads/{run_id(thread)}", body=body)
        return dict(reply.get("thread", {}))

    async def copy_thread(self, thread: str) -> dict[str, Any]:
        reply = await self.call("POST", f"/v1/threads/{run_id(thread)}:copy", body={})
        return dict(reply.get("thread", {}))

    async def delete_run(self, name: str) -> None:
        await self.call("DELETE", f"/v1/runs/{run_id(name)}")

    async def get_thread_state(self, thread: str, checkpoint: str = "") -> dict[str, Any]:
        path = f"/v1/threads/{run_id(thread)}/state"
        reply = await self.call("GET", path, query={"checkpoint": checkpoint})
        return dict(reply.get("state", {}))

    async def list_thread_history(
        self, thread: str, page_size: int, page_token: str = ""
    ) -> dict[str, Any]:
        """A page of the thread's checkpoints, newest first: `states`, `nextPageToken`."""
        query = {"pageSize": page_size, "pageToken": page_token}
        return await self.call("GET", f"/v1/threads/{run_id(thread)}/history", query=query)

    async def update_thread_state(
        self, thread: str, values: dict[str, Any], checkpoint: str, request_id: str
    ) -> dict[str, Any]:
        """UpdateThreadState on the latest checkpoint, or on `checkpoint` (a branch)."""
        body = {"values": values, "checkpoint": checkpoint, "requestId": request_id}
        reply = await self.call("POST", f"/v1/threads/{run_id(thread)}/state", body=body)
        return dict(reply.get("state", {}))

    async def list_workflows(self) -> list[dict[str, Any]]:
        return list((await self.call("GET", "/v1/workflows")).get("workflows", []))

    async def list_agents(self) -> list[dict[str, Any]]:
        reply = await self.call("GET", "/v1/agents", query={"pageSize": 200})
        return list(reply.get("agents", []))

    async def list_documents(self, page_size: int = 100) -> list[dict[str, Any]]:
        reply = await self.call("GET", "/v1/documents", query={"pageSize": page_size})
        return list(reply.get("documents", []))

    async def search(self, query: str, top_k: int = 5) -> list[dict[str, Any]]:
        # The first search of a fresh mesh loads the embedding model: give it time.
        reply = await self.call(
            "POST", "/v1/search", body={"query": query, "topK": top_k}, timeout=SEARCH_TIMEOUT
        )
        return list(reply.get("hits", []))


EventHandler = Callable[[dict[str, Any], int], None]


@dataclass(eq=False)
class Subscription:
    """One subscription; survives reconnects. `last` is the last sequence handed to `on_event`."""

    socket: EventSocket
    id: str
    filter: dict[str, Any] | None
    run: str
    since: Any
    on_event: EventHandler
    on_end: Callable[[], None] | None = None
    on_error: Callable[[str, bool], None] | None = None
    on_subscribed: Callable[[], None] | None = None
    last: int = 0
    opened_at: str = ""
    sent: bool = False
    ended: bool = False
    duplicates: int = 0

    def __post_init__(self) -> None:
        if not self.run and self.since in ("now", None):
            # A live subscription that saw nothing yet resumes from when it was made, so what
            # was published while the socket was down is not lost.
            self.opened_at = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")

    def message(self) -> dict[str, Any]:
        """The subscribe message for the current connection: resume after what was delivered."""
        message: dict[str, Any] = {"type": "subscribe", "id": self.id}
        if self.run:
            message["run"] = self.run
        else:
            message["filter"] = self.filter or {}
        if self.last:
            message["since"] = self.last
        elif self.opened_at and self.sent:
            message["since"] = self.opened_at
        elif self.since is not None:
            message["since"] = self.since
        self.sent = True
        return message

    def deliver(self, sequence: int, event: dict[str, Any]) -> None:
        if sequence <= self.last:
            self.duplicates += 1  # already shown before a reconnect
            return
        self.last = sequence
        self.on_event(event, sequence)

    def close(self) -> None:
        self.socket.forget(self)


@dataclass(eq=False)
class EventSocket:
    """The gateway's `/ws`, kept open: `start()` it, `subscribe(...)`, `stop()` at the end.

    `on_state(state, detail)` hears `connecting`, `open`, `reconnecting` (with the reason),
    `unauthorized` (a wrong token: it stops trying) and `closed`.
    """

    url: str
    token: str = ""
    on_state: Callable[[str, str], None] = lambda state, detail: None
    state: str = "idle"
    connects: int = 0
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _ws: ClientConnection | None = None
    _task: asyncio.Task[None] | None = None

    @classmethod
    def for_gateway(cls, http_url: str, token: str, **kwargs: Any) -> EventSocket:
        base = http_url.rstrip("/")
        ws_url = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
        return cls(url=f"{ws_url}/ws", token=token, **kwargs)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-socket")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_state("closed")

    def subscribe(
        self,
        *,
        filter: dict[str, Any] | None = None,
        run: str = "",
        since: Any = None,
        on_event: EventHandler,
        on_end: Callable[[], None] | None = None,
        on_error: Callable[[str, bool], None] | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ) -> Subscription:
        """`filter` ({types, subject}) with `since` now | beginning | N | time, or a `run`
        (replayed from the beginning, ended by an `end` message when the run ends)."""
        sub = Subscription(
            self,
            f"s{next(self._ids)}",
            filter,
            run,
            since,
            on_event,
            on_end,
            on_error,
            on_subscribed,
        )
        self.subscriptions[sub.id] = sub
        if self.state == "open":
            self._send_soon(sub.message())
        return sub

    def forget(self, sub: Subscription) -> None:
        if self.subscriptions.pop(sub.id, None) is not None and not sub.ended:
            self._send_soon({"type": "unsubscribe", "id": sub.id})

    # -- the connection ---------------------------------------------------------------------

    def _set_state(self, state: str, detail: str = "") -> None:
        self.state = state
        self.on_state(state, detail)

    def _send_soon(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is not None:
            asyncio.get_running_loop().create_task(self._send(ws, message))

    async def _send(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(message))

    async def _run(self) -> None:
        attempt = 0
        while True:
            self._set_state("connecting" if self.connects == 0 else "reconnecting", "")
            reason = ""
            try:
                headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
                async with connect(
                    self.url,
                    additional_headers=headers,
                    subprotocols=[Subprotocol("amelia.v1")],
                    open_timeout=10,
                    max_size=None,
                ) as ws:
                    self._ws = ws
                    self.connects += 1
                    attempt = 0
                    self._set_state("open")
                    for sub in list(self.subscriptions.values()):
                        await self._send(ws, sub.message())
                    async for text in ws:
                        self._receive(ws, text)
                    reason = "the gateway closed the connection"
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == CLOSE_UNAUTHORIZED:
                    self._set_state("unauthorized", exc.rcvd.reason or "wrong or missing token")
                    return
                reason = (exc.rcvd.reason if exc.rcvd else "") or "connection lost"
            except InvalidStatus as exc:
                if exc.response.status_code == 401:
                    self._set_state("unauthorized", "wrong or missing API token")
                    return
                reason = f"HTTP {exc.response.status_code}"
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            finally:
                self._ws = None
            attempt += 1
            delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** (attempt - 1))
            self._set_state("reconnecting", reason)
            await asyncio.sleep(delay / 2 + random.random() * delay / 2)

    def _receive(self, ws: ClientConnection, text: str | bytes) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        sub = self.subscriptions.get(str(message.get("subscription", "")))
        if kind == "ping":
            self._send_soon({"type": "pong"})
        elif sub is None:
            return
        elif kind == "event":
            sub.deliver(int(message.get("sequence", 0)), message.get("event") or {})
        elif kind == "subscribed" and sub.on_subscribed:
            sub.on_subscribed()
        elif kind == "end":
            sub.ended = True
            self.subscriptions.pop(sub.id, None)
            if sub.on_end:
                sub.on_end()
        elif kind == "error":
            error = message.get("error") or {}
            final = bool(message.get("final"))
            if final:
                sub.ended = True
                self.subscriptions.pop(sub.id, None)
            if sub.on_error:
                sub.on_error(str(error.get("message") or "stream error"), final)
