"""What the scale-out tests share: service replicas as real processes (`python -m amelia_…`),
each on its own port, logging to a file, that a test can freeze (SIGSTOP) and SIGKILL; waiting
for replicas to report SERVING; asking the NATS cluster who leads a stream and whether its
replicas caught up; sending a write again while the mesh answers UNAVAILABLE; and a WebSocket
client that resumes on another gateway with `since`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import grpc
import websockets
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rag_endpoint import EmbeddingServer
from service_process import ServiceProcess, python_path
from typer.testing import CliRunner

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_cli.main import app
from amelia_common.embedded import free_port
from amelia_common.nats_client import connect_nats
from amelia_common.nats_cluster import NatsNode
from amelia_common.settings import Settings, get_settings

T = TypeVar("T")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")  # a log line, not output

# The module each service runs as, and the setting naming its gRPC port.
SERVICE_MODULES = {
    "events": ("amelia_events", "EVENTS_GRPC_PORT", "amelia.v1.EventService"),
    "agents": ("amelia_agents", "AGENTS_GRPC_PORT", "amelia.v1.AgentService"),
    "gateway": ("amelia_gateway", "PORT", ""),  # HTTP: ready when /healthz answers
    "rag": ("amelia_rag", "RAG_GRPC_PORT", "amelia.v1.RagService"),
}


def replica_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a replica reads: the test's PostgreSQL/NATS and quiet JSON logs."""
    return {
        **os.environ,
        "DATABASE_URL": settings.DATABASE_URL,
        "NATS_URL": settings.NATS_URL,
        "AMELIA_DATA_DIR": str(settings.AMELIA_DATA_DIR),
        "EVENTS_STREAM": settings.EVENTS_STREAM,
        "EVENTS_STREAM_REPLICAS": str(settings.EVENTS_STREAM_REPLICAS),
        "RUNS_QUEUE_STREAM": settings.RUNS_QUEUE_STREAM,
        "RUNS_QUEUE_REPLICAS": str(settings.RUNS_QUEUE_REPLICAS),
        "ENVIRONMENT": "testing",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "GRPC_SHUTDOWN_GRACE_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",  # its log read while it runs
        # Replicas on one host would share the default metrics ports (the first one wins).
        "EVENTS_METRICS_PORT": "0",
        "AGENTS_METRICS_PORT": "0",
        "RAG_METRICS_PORT": "0",
        "WORKER_METRICS_PORT": "0",
        **(extra or {}),
    }


class Replica(ServiceProcess):
    """One service process (`service_process.ServiceProcess`) on its own port."""

    def __init__(
        self,
        service: str,
        settings: Settings,
        log: Path,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        pythonpath: Iterable[Path] = (),
    ) -> None:
        module, port_setting, self.grpc_service = SERVICE_MODULES[service]
        self.service = service
        self.port = free_port()
        self.host = host
        full_env = replica_env(
            settings,
            {
                "HOST": host,
                port_setting: str(self.port),
                "PYTHONPATH": python_path(pythonpath),
                **(env or {}),
            },
        )
        super().__init__(module, full_env, log)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def serving(self, timeout: float = 120) -> None:
        """Wait until the replica's health says SERVING (its dependencies up), or, for the
        gateway (HTTP), until its /healthz answers."""
        if not self.grpc_service:
            url = f"http://{self.address}/healthz"

            async def answers() -> bool:
                try:
                    await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
                except OSError:
                    return False
                return True

            return await self.wait_until(answers, "ready", timeout)
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=self.grpc_service)

            async def serves() -> bool:
                try:
                    reply = await stub.Check(request, timeout=5)
                except grpc.aio.AioRpcError:
                    return False
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            await self.wait_until(serves, "SERVING", timeout)


def launch(
    service: str, settings: Settings, logs: Path, count: int, **kwargs: object
) -> list[Replica]:
    """`count` replicas of `service`, launched now (`all_serving` waits for them). Replicas of
    every service may start at the same instant: the streams are made by
    `nats_client.ensure_stream`, safe when they race."""
    return [
        Replica(service, settings, logs / f"{service}-{i}.log", **kwargs)  # type: ignore[arg-type]
        for i in range(count)
    ]


@asynccontextmanager
async def all_serving(*groups: list[Replica]) -> AsyncIterator[None]:
    """Every replica of `groups` SERVING (waited for together); all stopped (or reaped, if
    killed) on the way out."""
    try:
        await asyncio.gather(*(r.serving() for group in groups for r in group))
        yield
    finally:
        for group in groups:
            for replica in group:
                await replica.stop(grace=5)


@asynccontextmanager
async def replicas(
    service: str, settings: Settings, logs: Path, count: int, **kwargs: object
) -> AsyncIterator[list[Replica]]:
    """`count` replicas of `service`, SERVING; stopped (or reaped, if killed) on the way out."""
    group = launch(service, settings, logs, count, **kwargs)
    async with all_serving(group):
        yield group


def addresses(group: list[Replica]) -> str:
    """The comma list a client is given for these replicas."""
    return ",".join(r.address for r in group)


async def stream_leader(settings: Settings, stream: str, timeout: float = 60) -> str:
    """The name of the node leading `stream` (waiting for an election, if one is on)."""
    nc = await connect_nats(settings, "test-stream-leader")
    try:
        js = nc.jetstream(timeout=5)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                info = await js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return info.cluster.leader
            except Exception as exc:  # noqa: BLE001 - no leader yet: asked again
                last = repr(exc)
            else:
                last = "no leader"
            assert asyncio.get_running_loop().time() < deadline, f"{stream}: {last}"
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def all_replicas_current(settings: Settings, stream: str, timeout: float = 90) -> None:
    """Wait until `stream` has a leader and every other replica is current (a node restarted
    after a kill has caught up)."""
    nc = await connect_nats(settings, "test-replicas-current")
    try:
        js = nc.jetstream(timeout=5)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            state = "no answer"
            try:
                info = await js.stream_info(stream)
                cluster = info.cluster
                if cluster is not None and cluster.leader:
                    peers = cluster.replicas or []
                    if len(peers) == 2 and all(p.current and not p.offline for p in peers):
                        return
                    state = f"leader {cluster.leader}, replicas {peers}"
            except Exception as exc:  # noqa: BLE001 - mid-election: asked again
                state = repr(exc)
            assert asyncio.get_running_loop().time() < deadline, f"{stream}: {state}"
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def one_leader(settings: Settings, streams: list[str], timeout: float = 60) -> str:
    """Move the leadership of every stream of `streams` to the node leading the first one
    (a leader stepdown naming the preferred node), so that one node's death takes all their
    leaders; that node's name."""
    leader = await stream_leader(settings, streams[0])
    nc = await connect_nats(settings, "test-one-leader")
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        for stream in streams[1:]:
            while (now := await stream_leader(settings, stream)) != leader:
                assert asyncio.get_running_loop().time() < deadline, f"{stream} led by {now}"
                request = {"placement": {"preferred": leader}}
                with contextlib.suppress(Exception):  # mid-election: asked again
                    await nc.request(
                        f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", json.dumps(request).encode(), 5
                    )
                await asyncio.sleep(0.5)
        return leader
    finally:
        await nc.close()


async def restart_node(node: NatsNode) -> None:
    """Start a killed node again on its store (it rejoins the cluster and catches up)."""
    await asyncio.to_thread(node.start)


# What a client sends again (with the same id, so that doing so is safe): the mesh is failing
# over, or the reply was lost with the replica that had it.
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def until_answered(send: Callable[[], Awaitable[T]], timeout: float = 120) -> T:
    """`send()` again while the mesh answers UNAVAILABLE (writes are not retried by the
    channel: each of ours carries an id that makes sending it again safe)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await send()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRIED or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def publish_until_acknowledged(
    stub: events_pb2_grpc.EventServiceStub, event: events_pb2.Event
) -> int:
    """PublishEvent, sent again with the same id until acknowledged; its sequence."""
    request = events_pb2.PublishEventRequest(event=event)
    reply = await until_answered(lambda: stub.PublishEvent(request, timeout=15))
    return int(reply.event.sequence)


class WebSocketClient:
    """A client of the gateways' `/ws` subscribed to one subject: when its gateway goes, it
    subscribes again on the next one with `since` = the last sequence it received, as a client
    of the mesh does; `got` is every sequence received, in order."""

    def __init__(self, gateways: list[Replica], subject: str) -> None:
        self.urls = [f"ws://{g.address}/ws" for g in gateways]
        self.subject = subject
        self.got: list[int] = []
        self.connections = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        turn = 0
        while True:
            since: int | str = self.got[-1] if self.got else "beginning"
            await self._receive(self.urls[turn % len(self.urls)], since)
            turn += 1
            await asyncio.sleep(0.1)

    async def _receive(self, url: str, since: int | str) -> None:
        with contextlib.suppress(websockets.ConnectionClosed, OSError):
            async with websockets.connect(url, open_timeout=30) as ws:
                self.connections += 1
                subscribe = {
                    "type": "subscribe",
                    "id": "s",
                    "filter": {"subject": self.subject},
                    "since": since,
                }
                await ws.send(json.dumps(subscribe))
                async for text in ws:
                    message = json.loads(text)
                    if message["type"] == "event":
                        self.got.append(int(message["sequence"]))
                    elif message["type"] == "error" and message.get("final", True):
                        raise AssertionError(message)  # not one the gateway recovers from

    async def received(self, count: int, timeout: float = 90) -> list[int]:
        """Every sequence received, once there are `count` of them."""
        await wait_for(
            lambda: len(self.got) >= count, lambda: f"{len(self.got)} of {count}", timeout
        )
        return self.got

    def close(self) -> None:
        self.task.cancel()


async def wait_for(
    condition: Callable[[], object], what: str | Callable[[], str], timeout: float = 90
) -> None:
    """Wait until `condition()` is true; else AssertionError saying what never happened."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(what if isinstance(what, str) else what())
        await asyncio.sleep(0.05)


def embedding_env(endpoint: EmbeddingServer) -> dict[str, str]:
    """What a rag replica needs to embed with `endpoint` instead of loading a model."""
    return {"EMBEDDING_PROVIDER": "openai", "EMBEDDING_BASE_URL": endpoint.url}


def amelia_status(env: dict[str, str]) -> tuple[int, str]:
    """`amelia status` as a terminal of 80 columns shows it (settings read afresh)."""
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["status"], env={**env, "COLUMNS": "80"})
    finally:
        get_settings.cache_clear()
    return result.exit_code, ANSI.sub("", result.output)
