"""Small helpers shared by the agents and workflows tests: run calls, event filters, and
`WorkerProcess` (a real `python -m amelia_agents.worker` to SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from agents_fake_llm import kill, start_fake_openai
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_process import ServiceProcess, python_path

from amelia.v1 import agents_pb2, agents_pb2_grpc, events_pb2, rag_pb2, rag_pb2_grpc
from amelia_agents import workflows
from amelia_agents.server import build_service as build_agents
from amelia_common.eventlog import event_data
from amelia_common.grpc_client import aio_channel
from amelia_common.grpc_server import GrpcService
from amelia_common.settings import Settings

Stub = agents_pb2_grpc.AgentServiceStub
S = agents_pb2


@dataclass
class RunningAgents:
    """The agents service in process, and a channel to it."""

    service: GrpcService
    channel: grpc.aio.Channel

    @property
    def stub(self) -> agents_pb2_grpc.AgentServiceStub:
        return agents_pb2_grpc.AgentServiceStub(self.channel)

    async def health(self, name: str = "amelia.v1.AgentService") -> str:
        """The health status of `name` (a service, or an entry like `dependency/workers`)."""
        reply = await health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=name), timeout=10
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def wait_health(self, name: str, status: str, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while (current := await self.health(name)) != status:
            assert asyncio.get_running_loop().time() < deadline, f"{name} stayed {current}"
            await asyncio.sleep(0.2)


@asynccontextmanager
async def running_agents(settings: Settings) -> AsyncIterator[RunningAgents]:
    """The agents service in process on a free port, with a channel to it over gRPC."""
    service = await build_agents(settings)
    port = await service.start()
    channel = aio_channel(f"127.0.0.1:{port}", settings)
    try:
        yield RunningAgents(service, channel)
    finally:
        await channel.close()
        await service.stop(1.0)


@asynccontextmanager
async def serve_agents(settings: Settings) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    """The agents service in process on a free port, and a stub talking to it over gRPC."""
    async with running_agents(settings) as running:
        yield running.stub


@asynccontextmanager
async def local_model_agents(
    make_settings: Callable[..., Settings],
    events_address: str,
    model_url: str,
    queue: str,
    **more: Any,
) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    """The agents service with the `local:` provider at `model_url` (a fake llama.cpp server),
    one worker, quick model retries and a run queue of its own (`queue` in its name).
    `make_settings` is the `infra` fixture's `settings`; `more` are further settings (or
    others for these, e.g. more workers)."""
    values: dict[str, Any] = {
        "EVENTS_ADDRESS": events_address,
        "LOCAL_MODEL_URL": model_url,
        "AGENT_WORKERS": 1,
        "LLM_RETRY_BACKOFF_SECONDS": 0.05,
        "RUNS_QUEUE_STREAM": f"AMELIA_RUNS_{queue}_{uuid.uuid4().hex[:8]}",
    }
    settings = make_settings(**{**values, **more})
    async with serve_agents(settings) as stub:
        yield stub


async def wait_status(stub: Stub, name: str, *statuses: int, timeout: float = 30) -> S.Run:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = (await stub.GetRun(S.GetRunRequest(name=name))).run
        if run.status in statuses:
            return run
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} stayed {S.RunStatus.Name(run.status)}: {run}")
        await asyncio.sleep(0.05)


async def collect(
    stub: Stub, name: str, after: int = 0, timeout: float = 60
) -> list[events_pb2.Event]:
    """StreamRun until the server ends the stream."""

    async def read() -> list[events_pb2.Event]:
        out = []
        async for response in stub.StreamRun(S.StreamRunRequest(name=name, after_sequence=after)):
            out.append(response.event)
        return out

    return await asyncio.wait_for(read(), timeout)


def types(events: list[events_pb2.Event]) -> list[str]:
    return [e.type for e in events]


def tokens(events: list[events_pb2.Event]) -> list[str]:
    return [event_data(e)["text"] for e in events if e.type == "run.token"]


def data(events: list[events_pb2.Event], event_type: str) -> list[dict[str, Any]]:
    return [event_data(e) for e in events if e.type == event_type]


async def create_run(stub: Stub, **run: Any) -> S.Run:
    message = S.Run()
    for key, value in run.items():
        if key == "input":
            message.input.update(value)
            message.input.SetInParent()  # given, even empty: no input continues a thread
        elif key == "timeout":
            message.timeout.FromSeconds(value)
        else:
            setattr(message, key, value)
    return (await stub.CreateRun(S.CreateRunRequest(run=message))).run


async def chat_on_one_thread(stub: Stub, *turns: tuple[str, str]) -> list[S.Run]:
    """`workflows/chat` runs of `(message, model)` turns on one new thread, each started once
    the one before completed; the runs, completed."""
    done: list[S.Run] = []
    for message, model in turns:
        run = await create_run(
            stub,
            workflow="workflows/chat",
            thread=done[-1].thread if done else "",
            input={"message": message, "model": model},
        )
        done.append(await wait_status(stub, run.name, S.RUN_STATUS_COMPLETED))
    return done


@asynccontextmanager
async def ingested_document(
    rag: rag_pb2_grpc.RagServiceStub, title: str, text: str, folder: str
) -> AsyncIterator[str]:
    """`text` in the RAG service as `<title>-<tag>` at `/<folder>/<tag>/<title>.md` (a fresh tag:
    no other test or run shares it); yields the document's name, deleted on the way out."""
    tag = uuid.uuid4().hex[:8]
    source = rag_pb2.DocumentSource(title=f"{title}-{tag}", file_path=f"/{folder}/{tag}/{title}.md")
    reply = await rag.IngestDocument(
        rag_pb2.IngestDocumentRequest(source=source, content=text.encode())
    )
    try:
        yield reply.document.name
    finally:
        await rag.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=reply.document.name))


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


class WorkerProcess(ServiceProcess):
    """`python -m amelia_agents.worker`, to SIGKILL (see tests/service_process.py).

    It reaches the database and NATS of `settings`; `env` adds or overrides variables (queue,
    ack wait, workflow modules, provider URLs) and `pythonpath` lets it import test plugins.
    `module` "amelia_agents" runs the whole agents service (its API too) instead.
    """

    def __init__(
        self,
        settings: Settings,
        log: Path,
        env: Mapping[str, str] | None = None,
        pythonpath: Iterable[Path] = (),
        module: str = "amelia_agents.worker",
    ) -> None:
        full_env = {
            **os.environ,
            "DATABASE_URL": settings.DATABASE_URL,
            "NATS_URL": settings.NATS_URL,
            "AMELIA_DATA_DIR": str(settings.AMELIA_DATA_DIR),
            "ENVIRONMENT": "testing",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            "AGENT_WORKERS": "1",
            "PYTHONPATH": python_path(pythonpath),
            **(env or {}),
        }
        super().__init__(module, full_env, log)

    async def ready(self, timeout: float = 60) -> None:
        await self.wait_log("workers started", timeout=timeout)


async def killed_mid_reply(
    stub: agents_pb2_grpc.AgentServiceStub,
    agent: agents_pb2.Agent,
    port: int,
    after: int,
    *,
    llama: bool = False,
    pause: float = 2.0,
) -> tuple[str, list[events_pb2.Event]]:
    """A run of `agent` whose fake model server (tests/agents_fake_llm.py, on `port`) is
    SIGKILLed after `after` tokens and started again `pause` seconds later: the run's name and
    all its events."""
    server = await start_fake_openai(port, llama)
    try:
        created = await stub.CreateAgent(
            agents_pb2.CreateAgentRequest(agent=agent, agent_id=f"restart-{uuid.uuid4().hex[:8]}")
        )
        run = await create_run(stub, agent=created.agent.name, input={"message": "hi"})
        seen = []
        call = stub.StreamRun(agents_pb2.StreamRunRequest(name=run.name))
        async with asyncio.timeout(60):
            async for response in call:
                seen.append(response.event)
                if len(tokens(seen)) >= after:
                    break
        call.cancel()
        await kill(server)  # SIGKILL in the middle of the reply, as the QA did to llama.cpp
        await asyncio.sleep(pause)
        server = await start_fake_openai(port, llama)
        rest = await collect(stub, run.name, after=seen[-1].sequence, timeout=120)
        return run.name, seen + rest
    finally:
        await kill(server)


def register_said_workflow(name: str, description: str, graph: Any) -> str:
    """Register the test workflow `name` running `graph` (an uncompiled graph over a state whose
    `said` is a list of texts): it starts with nothing said and outputs {"said": how many}."""
    workflows.register(
        workflows.Workflow(
            name=name,
            description=description,
            nodes=[node for node in graph.nodes if not node.startswith("__")],
            build=lambda _agent: graph,
            to_state=lambda value: {"said": []},
            to_output=lambda state: {"said": len(state.get("said", []))},
            input_schema={"type": "object"},
        ),
        replace=True,
    )
    return name


def migrate_agents_to(revision: str) -> Callable[[Any], None]:
    """For `conn.run_sync`: the agents tables moved to `revision` — upgraded to "head", else
    downgraded to it — on that connection, as the service's own migrations run."""
    from alembic import command
    from alembic.config import Config

    from amelia_agents.resources import MIGRATIONS

    def move(sync_conn: Any) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = sync_conn
        cfg.attributes["version_table"] = "alembic_version_agents"
        if revision == "head":
            command.upgrade(cfg, revision)
        else:
            command.downgrade(cfg, revision)

    return move
