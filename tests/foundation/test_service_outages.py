"""Real services while a dependency is down: NOT_SERVING, and every call UNAVAILABLE naming the
dependency that is down (never INTERNAL, never the wrong one), answered once even to a client
that retries UNAVAILABLE reads (the server tells it not to); all of it back once it returns."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mesh_helpers import Mesh
from prometheus_client import REGISTRY

from amelia.v1 import agents_pb2, agents_pb2_grpc, events_pb2, rag_pb2
from amelia_agents.server import build_service as build_agents
from amelia_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from amelia_common.grpc_client import aio_channel
from amelia_common.grpc_server import GrpcService
from amelia_common.settings import Settings
from amelia_events.server import build_service as build_events

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def wait_for(port: int, service: str, expected: int, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            if reply.status == expected:
                return
            assert asyncio.get_running_loop().time() < deadline, f"{service} stayed {reply.status}"
            await asyncio.sleep(0.2)


async def follows(
    service: GrpcService, server: EmbeddedNats | EmbeddedPostgres, name: str, dependency: str
) -> None:
    """`service` (on `server`) goes NOT_SERVING, naming `dependency`, while `server` is stopped,
    and SERVING again once it is back; both are stopped at the end."""
    port = await service.start()
    try:
        await wait_for(port, name, SERVING)
        server.stop()
        await wait_for(port, name, NOT_SERVING)
        await wait_for(port, f"dependency/{dependency}", NOT_SERVING)
        server.start()
        await wait_for(port, name, SERVING)
    finally:
        await service.stop(0)
        server.stop()


async def test_events_service_follows_its_nats(tmp_path: Path, settings: Settings) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    own = settings.model_copy(update={"NATS_URL": nats.start()})
    await follows(await build_events(own), nats, "amelia.v1.EventService", "nats")


async def test_agents_service_follows_its_postgres(tmp_path: Path, settings: Settings) -> None:
    postgres = EmbeddedPostgres(tmp_path)
    own = settings.model_copy(update={"DATABASE_URL": postgres.start(), "AGENT_WORKERS": 0})
    await follows(await build_agents(own), postgres, "amelia.v1.AgentService", "postgres")


async def test_create_run_with_the_queue_down_records_nothing(
    tmp_path: Path, settings: Settings
) -> None:
    """UNAVAILABLE, no run stored, the thread not blocked; once NATS is back the run goes."""
    nats = EmbeddedNats(tmp_path, free_port())
    own = settings.model_copy(update={"NATS_URL": nats.start(), "AGENT_WORKERS": 0})
    service = await build_agents(own)
    port = await service.start()
    channel = aio_channel(f"127.0.0.1:{port}", own)
    stub = agents_pb2_grpc.AgentServiceStub(channel)
    try:
        thread = (await stub.CreateThread(agents_pb2.CreateThreadRequest())).thread.name
        run = agents_pb2.Run(workflow="workflows/echo", thread=thread)
        run.input.update({"message": "hello"})
        nats.stop()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateRun(agents_pb2.CreateRunRequest(run=run), timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "nothing was started" in (refused.value.details() or "")
        listed = await stub.ListRuns(agents_pb2.ListRunsRequest(thread=thread))
        assert list(listed.runs) == []
        nats.start()
        await wait_for(port, "amelia.v1.AgentService", SERVING)
        created = await stub.CreateRun(agents_pb2.CreateRunRequest(run=run), timeout=60)
        assert created.run.status == agents_pb2.RUN_STATUS_QUEUED
    finally:
        await channel.close()
        await service.stop(0)
        nats.stop()


# --------------------------------------------------------------------------- one call, any outage


Call = Callable[[], Awaitable[Any]]


def random_name(collection: str) -> str:
    return f"{collection}/{uuid.uuid4()}"


def postgres_calls(mesh: Mesh) -> dict[str, Call]:
    """Reads and writes of the two services that keep their state in PostgreSQL."""
    agents, rag, A, R = mesh.agents, mesh.rag, agents_pb2, rag_pb2
    run = A.Run(workflow="workflows/echo", thread=random_name("threads"))
    run.input.update({"message": "hello"})
    return {
        "agents.GetRun": lambda: agents.GetRun(A.GetRunRequest(name=random_name("runs"))),
        "agents.ListRuns": lambda: agents.ListRuns(A.ListRunsRequest()),
        "agents.GetThread": lambda: agents.GetThread(
            A.GetThreadRequest(name=random_name("threads"))
        ),
        "agents.ListAgents": lambda: agents.ListAgents(A.ListAgentsRequest()),
        "agents.CreateThread": lambda: agents.CreateThread(A.CreateThreadRequest()),
        "agents.CreateAgent": lambda: agents.CreateAgent(
            A.CreateAgentRequest(
                agent_id=f"a{uuid.uuid4().hex[:8]}",
                agent=A.Agent(model="offline:echo"),
            )
        ),
        "agents.CreateRun": lambda: agents.CreateRun(
            A.CreateRunRequest(run=run, request_id=uuid.uuid4().hex)
        ),
        "rag.GetDocument": lambda: rag.GetDocument(
            R.GetDocumentRequest(name=random_name("documents"))
        ),
        "rag.ListDocuments": lambda: rag.ListDocuments(R.ListDocumentsRequest()),
        "rag.Search": lambda: rag.Search(R.SearchRequest(query="what is down")),
        "rag.IngestDocument": lambda: rag.IngestDocument(
            R.IngestDocumentRequest(
                source=R.DocumentSource(title=f"outage {uuid.uuid4().hex}"),
                content=b"PostgreSQL is down, this must not be stored.",
            )
        ),
        "rag.DeleteDocument": lambda: rag.DeleteDocument(
            R.DeleteDocumentRequest(name=random_name("documents"))
        ),
    }


async def nats_calls(mesh: Mesh, title: str) -> dict[str, Call]:
    """Reads and writes that need NATS (a thread is made first: CreateRun queues on NATS); the
    document ingested is called `title`."""
    thread = (await mesh.agents.CreateThread(agents_pb2.CreateThreadRequest())).thread.name
    run = agents_pb2.Run(workflow="workflows/echo", thread=thread)
    run.input.update({"message": "hello"})
    events, E = mesh.events, events_pb2
    return {
        "events.PublishEvent": lambda: events.PublishEvent(
            E.PublishEventRequest(event=E.Event(type="system.warning", subject="outage/x"))
        ),
        "events.ListEvents": lambda: events.ListEvents(E.ListEventsRequest()),
        "events.GetEvent": lambda: events.GetEvent(E.GetEventRequest(name="events/1")),
        "agents.CreateRun": lambda: mesh.agents.CreateRun(agents_pb2.CreateRunRequest(run=run)),
        "rag.IngestDocument": lambda: mesh.rag.IngestDocument(
            rag_pb2.IngestDocumentRequest(
                source=rag_pb2.DocumentSource(title=title),
                content=b"Stored while NATS is down; its events follow NATS back.",
            )
        ),
    }


async def outcome(call: Call) -> tuple[grpc.StatusCode, str]:
    try:
        await asyncio.wait_for(call(), timeout=90)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def wrong(outcomes: dict[str, tuple[grpc.StatusCode, str]], dependency: str) -> dict[str, Any]:
    return {
        rpc: (code.name, details)
        for rpc, (code, details) in outcomes.items()
        if code != grpc.StatusCode.UNAVAILABLE or dependency not in details
    }


async def until_ok(call: Call, timeout: float = 60) -> None:
    """A call that works again once the dependency is back (the pool may need a retry)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (code := (await outcome(call))[0]) != grpc.StatusCode.OK:
        assert asyncio.get_running_loop().time() < deadline, f"still {code.name}"
        await asyncio.sleep(0.5)


async def during_outage(
    server: EmbeddedPostgres | EmbeddedNats, calls: dict[str, Call]
) -> dict[str, tuple[grpc.StatusCode, str]]:
    """Each call's outcome while `server` is stopped; it is started again, pass or fail. The
    calls go at once: each may wait out its dependency's budget, one after the other they took
    the sum of those waits."""
    server.stop()
    try:
        outcomes = await asyncio.gather(*(outcome(call) for call in calls.values()))
        return dict(zip(calls, outcomes, strict=True))
    finally:
        server.start()


def attempts_served(method: str) -> float:
    """How many calls of `method` the in-process services answered UNAVAILABLE (their metric)."""
    labels = {"method": method, "code": "UNAVAILABLE"}
    return REGISTRY.get_sample_value("amelia_rpc_duration_seconds_count", labels) or 0.0


async def outage_with_retrying_read(
    mesh: Mesh,
    server: EmbeddedPostgres | EmbeddedNats,
    calls: dict[str, Call],
    service: str,
    method: str,
    request: Message,
) -> tuple[dict[str, tuple[grpc.StatusCode, str]], float]:
    """`during_outage`, with `request` also sent to `method` through a channel as the mesh's own
    clients have (UNAVAILABLE reads retried, up to 5 attempts); and how many calls of `method`
    the services answered UNAVAILABLE meanwhile."""
    channel = aio_channel(f"127.0.0.1:{mesh.services[service].bound_port}", mesh.settings)
    read = channel.unary_unary(method, request_serializer=type(request).SerializeToString)
    before = attempts_served(method)
    try:
        outcomes = await during_outage(server, {**calls, "retrying client": lambda: read(request)})
    finally:
        await channel.close()
    return outcomes, attempts_served(method) - before


async def test_postgres_down_every_call_is_unavailable_naming_postgres(mesh: Mesh) -> None:
    await mesh.wait_serving()
    # The same read as one of the calls, through a retrying client too: each is answered once,
    # not five times (each waiting out PostgreSQL again: 26-33 s before the caller heard).
    outcomes, attempts = await outage_with_retrying_read(
        mesh,
        mesh.postgres,
        postgres_calls(mesh),
        "agents",
        "/amelia.v1.AgentService/GetRun",
        agents_pb2.GetRunRequest(name=random_name("runs")),
    )
    assert wrong(outcomes, "PostgreSQL") == {}
    assert attempts == 2  # the plain GetRun and the retrying client's, each answered once
    await mesh.wait_serving()
    calls = postgres_calls(mesh)
    for rpc in ("agents.ListRuns", "rag.ListDocuments"):
        await until_ok(calls[rpc])


async def test_nats_down_every_call_is_unavailable_naming_nats(mesh: Mesh) -> None:
    await mesh.wait_serving()
    # This run's own title: the end of the test stores the document (NATS back), and the mesh
    # is the session's.
    title = f"NATS is down {uuid.uuid4().hex}"
    calls = await nats_calls(mesh, title)
    outcomes, attempts = await outage_with_retrying_read(
        mesh,
        mesh.nats,
        calls,
        "events",
        "/amelia.v1.EventService/ListEvents",
        events_pb2.ListEventsRequest(),
    )
    # A document needs NATS only for its events (rag's outbox): it is stored meanwhile.
    assert outcomes.pop("rag.IngestDocument") == (grpc.StatusCode.OK, "")
    assert wrong(outcomes, "NATS") == {}
    assert attempts == 2  # the plain ListEvents and the retrying client's, each answered once
    await mesh.wait_serving()
    listed = await mesh.rag.ListDocuments(rag_pb2.ListDocumentsRequest(page_size=1000))
    (stored,) = [d for d in listed.documents if d.title == title]
    await until_ok(calls["events.PublishEvent"])
    # Its `document.uploaded` followed NATS back, once.
    request = events_pb2.ListEventsRequest(
        filter=events_pb2.EventFilter(types=["document.uploaded"], subject=stored.name)
    )
    deadline = asyncio.get_running_loop().time() + 60
    while not (told := (await mesh.events.ListEvents(request)).events):
        assert asyncio.get_running_loop().time() < deadline, "document.uploaded never came"
        await asyncio.sleep(0.5)
    assert len(told) == 1
