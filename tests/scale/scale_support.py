"""What the scale-out tests share: service replicas as real processes (`python -m amelia_…`),
each on its own port, logging to a file, that a test can freeze (SIGSTOP) and SIGKILL; waiting
for a replica to report SERVING; and asking the NATS cluster who leads a stream and whether its
replicas caught up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from amelia_common.embedded import free_port
from amelia_common.nats_client import connect_nats
from amelia_common.nats_cluster import NatsNode
from amelia_common.settings import Settings

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
        **(extra or {}),
    }


class Replica:
    """One service process on its own port, in its own process group."""

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
        self.log = log
        paths = [str(p) for p in pythonpath]
        full_env = replica_env(
            settings,
            {
                "HOST": host,
                port_setting: str(self.port),
                "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
                **(env or {}),
            },
        )
        self._file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def serving(self, timeout: float = 120) -> None:
        """Wait until the replica's health says SERVING (its dependencies up)."""
        if not self.grpc_service:
            return await self._http_ready(timeout)
        deadline = asyncio.get_running_loop().time() + timeout
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.service} exited: {self.log_text()[-3000:]}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(service=self.grpc_service), timeout=5
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"{self.service} never SERVING: {self.log_text()[-3000:]}")
                await asyncio.sleep(0.2)

    async def _http_ready(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        url = f"http://{self.address}/healthz"
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.service} exited: {self.log_text()[-3000:]}")
            try:
                await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
                return
            except OSError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.service} never ready: {self.log_text()[-3000:]}")
            await asyncio.sleep(0.2)

    def freeze(self) -> None:
        """SIGSTOP: calls sent to it now wait, in flight, until it is killed."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    async def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._file.close()


@asynccontextmanager
async def replicas(
    service: str, settings: Settings, logs: Path, count: int, **kwargs: object
) -> AsyncIterator[list[Replica]]:
    """`count` replicas of `service`, SERVING; stopped (or reaped, if killed) on the way out.

    The first one is SERVING before the others start: replicas starting at the same instant race
    to create the streams, and the loser's stream update can outlast nats-py's 5 s API timeout on
    a busy machine (see docs/scale-out.md)."""
    started: list[Replica] = []
    try:
        for i in range(count):
            started.append(Replica(service, settings, logs / f"{service}-{i}.log", **kwargs))  # type: ignore[arg-type]
            if i == 0:
                await started[0].serving()
        await asyncio.gather(*(r.serving() for r in started[1:]))
        yield started
    finally:
        for replica in started:
            await replica.stop()


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


async def restart_node(node: NatsNode) -> None:
    """Start a killed node again on its store (it rejoins the cluster and catches up)."""
    await asyncio.to_thread(node.start)


class EmbeddingEndpoint:
    """A stand-in for an OpenAI-compatible `/v1/embeddings` server (the edge of the world), so
    rag replicas start without loading a model: each text gets a unit vector picked by its hash
    (searches here are by keyword; only the wire format matters)."""

    def __init__(self, dimension: int = 384) -> None:
        dim = dimension

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                data = []
                for index, text in enumerate(texts):
                    vector = [0.0] * dim
                    vector[zlib.crc32(text.encode()) % dim] = 1.0
                    data.append({"object": "embedding", "index": index, "embedding": vector})
                payload = json.dumps({"object": "list", "data": data, "model": body["model"]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def env(self) -> dict[str, str]:
        """What a rag replica needs to use it."""
        return {
            "EMBEDDING_PROVIDER": "openai",
            "EMBEDDING_BASE_URL": f"http://127.0.0.1:{self.server.server_port}/v1",
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
