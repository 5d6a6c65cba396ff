"""Running a real gateway (uvicorn on a free port) in front of real services, and client helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import websockets

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.embedded import free_port, stop_child
from amelia_common.grpc_client import aio_channel
from amelia_common.grpc_server import GrpcService
from amelia_common.settings import Settings
from amelia_gateway.server import GatewayServer, build_server
from amelia_gateway.state import Gateway


class Listening:
    """A gateway on a local port: its HTTP and socket URLs."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@dataclass
class RunningGateway(Listening):
    server: GatewayServer
    task: asyncio.Task[None]
    port: int
    settings: Settings

    @property
    def gateway(self) -> Gateway:
        return self.server.gateway

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=30)


async def start_gateway(settings: Settings) -> RunningGateway:
    """A gateway on a free port."""
    server = build_server(settings, host="127.0.0.1", port=0)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    else:
        raise RuntimeError("the gateway did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningGateway(server, task, port, settings)


@dataclass
class GatewayProcess(Listening):
    """`python -m amelia_gateway` as its own process, its stderr (the log) in `log_file`."""

    process: asyncio.subprocess.Process
    port: int
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextlib.asynccontextmanager
async def gateway_process(
    events_address: str, directory: Path, **env: str
) -> AsyncIterator[GatewayProcess]:
    """Run the gateway as the mesh does (a process configured by the environment) until exit."""
    port = free_port()
    environment = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "EVENTS_ADDRESS": events_address,
        "AGENTS_ADDRESS": closed_address(),
        "RAG_ADDRESS": closed_address(),
        "LOG_LEVEL": "WARNING",
        "AMELIA_API_TOKEN": "",
        **env,
    }
    log_file = directory / "gateway.log"
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "amelia_gateway",
            env=environment,
            cwd=directory,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    running = GatewayProcess(process, port, log_file)
    try:
        async with httpx.AsyncClient(base_url=running.url) as http:
            for _ in range(600):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                if process.returncode is not None:
                    raise RuntimeError(running.log())
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the gateway did not start:\n" + running.log())
        yield running
    finally:
        await stop_child(process)


@dataclass
class Mesh:
    """A gateway in front of real agents and rag services (and the session's events service)."""

    gateway: RunningGateway
    agents: GrpcService
    rag: GrpcService
    http: httpx.AsyncClient


def closed_address() -> str:
    """An address nothing listens on (an unavailable upstream)."""
    return f"127.0.0.1:{free_port()}"


@dataclass
class Publisher:
    """Publishes events straight to the events service (not through the gateway)."""

    channel: grpc.aio.Channel
    stub: events_pb2_grpc.EventServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.stub = events_pb2_grpc.EventServiceStub(self.channel)

    @classmethod
    def connect(cls, address: str, settings: Settings) -> Publisher:
        return cls(aio_channel(address, settings))

    async def publish(
        self, subject: str, event_type: str = "app.token", data: dict[str, Any] | None = None
    ) -> int:
        event = events_pb2.Event(type=event_type, subject=subject, source="tests")
        if data:
            event.data.update(data)
        reply = await self.stub.PublishEvent(events_pb2.PublishEventRequest(event=event))
        return int(reply.event.sequence)

    async def close(self) -> None:
        await self.channel.close()


def new_subject(collection: str = "runs") -> str:
    return f"{collection}/{uuid.uuid4()}"


class Client:
    """A websockets client speaking the gateway protocol."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> Client:
        # No keepalive pings of the client's own: on a loaded machine a gateway in the test's
        # process can take longer than websockets' 20 s to answer one, and the library then
        # closes the socket (1011) under a test about something else. The gateway's heartbeat
        # is tested on its own.
        kwargs.setdefault("ping_interval", None)
        ws = await websockets.connect(url, open_timeout=20, **kwargs)
        client = cls(ws)
        client.welcome = await client.recv()
        assert client.welcome["type"] == "welcome", client.welcome
        return client

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = 20) -> dict[str, Any]:
        text = await asyncio.wait_for(self.ws.recv(), timeout=timeout)
        message: dict[str, Any] = json.loads(text)
        return message

    async def recv_type(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        """The next message of `kind`, skipping pings."""
        while True:
            message = await self.recv(timeout)
            if message["type"] == "ping":
                continue
            assert message["type"] == kind, message
            return message

    async def subscribe(self, sub_id: Any, **fields: Any) -> None:
        await self.send({"type": "subscribe", "id": sub_id, **fields})
        reply = await self.recv_type("subscribed")
        assert reply["subscription"] == sub_id

    async def events(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < count:
            message = await self.recv(timeout)
            if message["type"] == "event":
                out.append(message)
            elif message["type"] not in ("ping",):
                raise AssertionError(f"unexpected message {message}")
        return out

    async def close(self) -> None:
        await self.ws.close()


async def wait_for(predicate: Any, timeout: float = 20, interval: float = 0.02) -> None:
    """Wait until `predicate()` is true (generous timeouts; never a performance assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
