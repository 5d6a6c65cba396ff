"""Webhooks and WaitRun with real processes: a standalone worker (`python -m
amelia_agents.worker`) that is the only live process with the database still delivers a run's
webhook; a WaitRun on an agents process that is stopped (SIGTERM, a restart) or SIGKILLed is
answered UNAVAILABLE at once, not left to hang until its timeout. Each process pair has a run
queue of its own, so the session's in-process agents service takes none of it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from agents_helpers import S, WorkerProcess, create_run, wait_status
from test_agents_webhooks_restart import agents_process
from webhook_receiver import receiving

from amelia.v1 import agents_pb2_grpc
from amelia_common.embedded import free_port
from amelia_common.grpc_client import aio_channel

HERE = Path(__file__).parent
SLOW = "offline:echo?delay_ms=100"


def _env(events_address: str, port: int, **more: str) -> dict[str, str]:
    return {
        "AGENTS_GRPC_PORT": str(port),
        "EVENTS_ADDRESS": events_address,
        "RUNS_QUEUE_STREAM": f"AMELIA_RUNS_HOOKS_{uuid.uuid4().hex[:8]}",
        **more,
    }


async def _slow_run(address: str, settings: Any, words: int, **fields: Any) -> S.Run:
    async with aio_channel(address, settings) as channel:
        return await create_run(
            agents_pb2_grpc.AgentServiceStub(channel),
            workflow="workflows/chat",
            input={"message": " ".join(f"w{i}" for i in range(words)), "model": SLOW},
            **fields,
        )


async def test_a_standalone_worker_alone_delivers_the_webhook(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    settings = infra.settings()
    port = free_port()
    env = _env(events_address, port)
    api = agents_process(settings, {**env, "AGENT_WORKERS": "0"}, tmp_path / "api.log")
    worker = WorkerProcess(
        settings,
        tmp_path / "worker.log",
        {**env, "AGENTS_METRICS_PORT": "0", "AGENT_WORKFLOW_MODULES": "agent_test_workflows"},
        [HERE],
    )
    async with receiving() as receiver:
        try:
            await asyncio.gather(api.wait_log("listening"), worker.ready())
            run = await _slow_run(f"127.0.0.1:{port}", settings, 20, webhook=receiver.url)
            api.kill()  # before the run ends: only the worker is left to tell the receiver
            await api.stop()
            (hook,) = await receiver.wait_for(1, timeout=120)
        finally:
            await asyncio.gather(api.stop(), worker.stop())
    assert hook.body["name"] == run.name
    assert hook.body["status"] == "RUN_STATUS_COMPLETED"
    assert hook.headers["x-amelia-attempt"] == "1"


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_a_wait_on_a_process_that_stops_is_answered_unavailable(
    infra: Any, events_address: str, tmp_path: Path, how: str
) -> None:
    settings = infra.settings()
    port = free_port()
    address = f"127.0.0.1:{port}"
    process = agents_process(settings, _env(events_address, port), tmp_path / "agents.log")
    try:
        await process.wait_log("listening")
        run = await _slow_run(address, settings, 600)  # 60 s: stopped long before
        async with aio_channel(address, settings) as channel:
            stub = agents_pb2_grpc.AgentServiceStub(channel)
            # The call's own deadline is 600 s: the answer must not wait for it.
            waiting = asyncio.ensure_future(
                stub.WaitRun(S.WaitRunRequest(name=run.name), timeout=600)
            )
            await wait_status(stub, run.name, S.RUN_STATUS_RUNNING)
            # Time for the wait to reach the service: too short weakens the test, never fails it.
            await asyncio.sleep(0.5)
            assert not waiting.done()
            if how == "sigkill":
                process.kill()
            else:
                await process.stop()
            async with asyncio.timeout(90):  # a guard only: the answer comes in seconds
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await waiting
    finally:
        await process.stop()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value
