"""Two agents services sharing one local model server: a run of the second, while the first
generates in the server's only slot, waits for a slot in its own service, says so
(`run.model.waiting`, reason `slot`), and the wait does not count against its timeout (s27
left open: each service counted only its own calls, so the second's request queued inside
llama.cpp, unseen, and failed "timeout").

The fake llama.cpp server (test_llm_local_slots.OneSlotLlama) generates one reply at a time,
holds the first after its first token, and answers `GET /slots` as llama.cpp does
(`is_processing`, `id_task`). `amelia status` shows the waiting call on the local model's line.
The first service runs in the test's process; the second is a real
`python -m amelia_agents`, started once the first run holds the slot, so the runs it takes
(the first service's one worker loop is busy) are the ones that find the server full."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agents_fake_llm import REPLY
from agents_helpers import S, WorkerProcess, collect, create_run, data, local_model_agents, tokens
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from test_llm_local_slots import OneSlotLlama, _first_event

from amelia.v1 import agents_pb2_grpc
from amelia_cli.commands.status import slot_waiting_calls, with_slot_waiting
from amelia_cli.health import Probe, probe_local_model
from amelia_common.embedded import free_port
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings

# The second run's timeout: shorter than it waits for the held first run.
TIMEOUT = 8


class SharedOneSlotLlama(OneSlotLlama):
    """`OneSlotLlama` with llama.cpp's `/slots`: what every client's requests hold."""

    def routes(self) -> list[Route]:
        return [*super().routes(), Route("/slots", self.slots)]

    async def slots(self, request: Request) -> Response:
        busy = self.slot.locked()
        slot: dict[str, Any] = {"id": 0, "n_ctx": 4096, "is_processing": busy}
        if busy:
            slot["id_task"] = self.served
        return JSONResponse([slot])


@asynccontextmanager
async def _other_agents_service(
    settings: Any, env: dict[str, str], log: Path, metrics_port: int
) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    """`python -m amelia_agents` (API and one worker loop) on the same queue and model server,
    its `/metrics` on `metrics_port`."""
    port = free_port()
    process = WorkerProcess(
        settings,
        log,
        {**env, "AGENTS_GRPC_PORT": str(port), "AGENTS_METRICS_PORT": str(metrics_port)},
        module="amelia_agents",
    )
    try:
        await process.wait_log("listening")
        await process.ready()
        async with aio_channel(f"127.0.0.1:{port}", settings) as channel:
            yield agents_pb2_grpc.AgentServiceStub(channel)
    finally:
        await process.stop(grace=10)


def _mesh_json(server: SharedOneSlotLlama, metrics_port: int) -> dict[str, Any]:
    """What `amelia up`'s mesh.json says of the second service (as `agents-2`) and the model."""
    return {
        "local_model": {"url": f"{server.url}/v1", "embedded": False, "off": ""},
        "units": {"agents-2": {"address": "127.0.0.1:1", "metrics_port": metrics_port}},
    }


async def _local_model_line(mesh: dict[str, Any]) -> Probe:
    """The local model's line of `amelia status`."""
    probes = [await probe_local_model(Settings(), mesh)]
    return with_slot_waiting(probes, await slot_waiting_calls(mesh))[0]


async def test_a_run_of_another_service_waits_for_the_shared_slot_visibly_and_off_its_timeout(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    server = SharedOneSlotLlama()
    await server.start()
    queue = f"AMELIA_RUNS_SHARED_SLOTS_{uuid.uuid4().hex[:8]}"
    env = {
        "EVENTS_ADDRESS": events_address,
        "LOCAL_MODEL_URL": f"{server.url}/v1",
        "LLM_RETRY_BACKOFF_SECONDS": "0.05",
        "RUNS_QUEUE_STREAM": queue,
    }
    try:
        async with local_model_agents(
            infra.settings, events_address, f"{server.url}/v1", "SHARED", RUNS_QUEUE_STREAM=queue
        ) as first_service:
            agent = (
                await first_service.CreateAgent(
                    S.CreateAgentRequest(
                        agent=S.Agent(model="local:tokens", retry_attempts=0),
                        agent_id=f"shared-slots-{uuid.uuid4().hex[:8]}",
                    )
                )
            ).agent
            first = await create_run(
                first_service, agent=agent.name, input={"message": "hi"}, timeout=600
            )
            await _first_event(first_service, first.name, "run.token")  # it holds the one slot
            metrics_port = free_port()
            async with _other_agents_service(
                infra.settings(), env, tmp_path / "second.log", metrics_port
            ) as second_service:
                second = await create_run(
                    second_service, agent=agent.name, input={"message": "hi"}, timeout=TIMEOUT
                )
                waiting = await _first_event(second_service, second.name, "run.model.waiting")
                assert waiting["reason"] == "slot", waiting
                assert waiting["slots"] == 1
                assert "other clients of the server" in waiting["message"], waiting
                # Longer than its timeout, waiting: it does not fail for it.
                await asyncio.sleep(TIMEOUT + 2)
                now = (await second_service.GetRun(S.GetRunRequest(name=second.name))).run
                assert now.status == S.RUN_STATUS_RUNNING, now.error
                # Its request was never sent to queue inside the server.
                assert len(server.requests) == 1
                # `amelia status` says so on the local model's line.
                mesh = _mesh_json(server, metrics_port)
                assert "1 waiting for a slot" in (await _local_model_line(mesh)).detail
                server.release("first")
                for stub, run in ((first_service, first), (second_service, second)):
                    events = await collect(stub, run.name, timeout=120)
                    assert events[-1].type == "run.completed", data(events, "run.failed")
                    assert "".join(tokens(events)) == REPLY
                    assert len(data(events, "run.model.waiting")) == (run is second)
                assert "0 waiting for a slot" in (await _local_model_line(mesh)).detail
    finally:
        server.release("first")
        await server.stop()
