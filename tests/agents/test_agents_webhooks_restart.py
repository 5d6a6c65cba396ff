"""A webhook owed when the agents service is SIGKILLed — after the run ended, before the
receiver took it — is delivered by the service started again: the delivery is a row in
PostgreSQL (`webhooks`), not a task in the killed process. A real `python -m amelia_agents`
process on a run queue of its own, so the session's in-process agents service (another queue)
delivers nothing of it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from agents_helpers import WorkerProcess, create_run
from test_agents_webhooks import told
from webhook_receiver import receiving

from amelia.v1 import agents_pb2_grpc
from amelia_common.embedded import free_port
from amelia_common.grpc_client import aio_channel

HERE = Path(__file__).parent


def agents_process(settings: Any, env: dict[str, str], log: Path) -> WorkerProcess:
    """`python -m amelia_agents` (API, one worker, the webhooks) with the tests' workflows."""
    more = {
        "AGENTS_METRICS_PORT": "0",
        "GRPC_SHUTDOWN_GRACE_SECONDS": "1",
        "AGENT_WORKFLOW_MODULES": "agent_test_workflows",
    }
    return WorkerProcess(settings, log, {**more, **env}, [HERE], module="amelia_agents")


async def test_a_webhook_owed_when_the_service_is_killed_is_delivered_after_it_restarts(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    settings = infra.settings()
    port = free_port()
    env = {
        "AGENTS_GRPC_PORT": str(port),
        "EVENTS_ADDRESS": events_address,
        "RUNS_QUEUE_STREAM": f"AMELIA_RUNS_WEBHOOKS_{uuid.uuid4().hex[:8]}",
    }
    address = f"127.0.0.1:{port}"
    async with receiving(then=503) as receiver:
        first = agents_process(settings, env, tmp_path / "agents-1.log")
        try:
            await first.wait_log("listening")
            async with aio_channel(address, settings) as channel:
                run = await create_run(
                    agents_pb2_grpc.AgentServiceStub(channel),
                    workflow="workflows/echo",
                    input={"message": "after the kill"},
                    webhook=receiver.url,
                )
            await receiver.wait_for(1)  # the run has ended; its first POST was refused
            first.kill()
        finally:
            await first.stop()
        assert all(h.answered == 503 for h in receiver.received)
        receiver.then = 200
        second = agents_process(settings, env, tmp_path / "agents-2.log")
        try:
            await second.wait_log("listening")
            await receiver.wait_until(
                lambda: any(h.answered == 200 for h in receiver.received), timeout=90
            )
            async with aio_channel(address, settings) as channel:  # a new connection
                stub = agents_pb2_grpc.AgentServiceStub(channel)
                delivered = await told(stub, run.name, "run.webhook.delivered")
        finally:
            await second.stop()
    hook = next(h for h in receiver.received if h.answered == 200)
    assert hook.body["name"] == run.name
    assert hook.body["status"] == "RUN_STATUS_COMPLETED"
    assert hook.body["output"] == {"message": "after the kill"}
    assert delivered["attempts"] >= 2 and delivered["status_code"] == 200
