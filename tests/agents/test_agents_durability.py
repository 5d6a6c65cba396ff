"""Durable runs: a worker process SIGKILLed mid-run is replaced and the run resumes from its
last checkpoint. Real `python -m amelia_agents.worker` processes on the real queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agents_helpers import S, collect, data, types, wait_status
from agents_helpers import WorkerProcess as SharedWorkerProcess

from amelia.v1 import agents_pb2_grpc
from amelia_agents.server import build_service
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings

HERE = Path(__file__).parent
QUEUE = "AMELIA_RUNS_DURABILITY"
ACK_WAIT = 2


class WorkerProcess(SharedWorkerProcess):
    """A worker on the durability test's queue, with the test workflows."""

    def __init__(self, settings: Settings, log: Path) -> None:
        env = {
            "RUNS_QUEUE_STREAM": QUEUE,
            "RUN_ACK_WAIT_SECONDS": str(ACK_WAIT),
            "AGENT_WORKFLOW_MODULES": "agent_test_workflows",
        }
        super().__init__(settings, log, env=env, pythonpath=[HERE])


@pytest.fixture
async def api(
    infra: object, events_address: str
) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    """An agents service with no workers of its own, on the durability test's queue."""
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        EVENTS_ADDRESS=events_address,
        AGENT_WORKERS=0,
        RUNS_QUEUE_STREAM=QUEUE,
        RUN_ACK_WAIT_SECONDS=ACK_WAIT,
        AGENT_WORKFLOW_MODULES=["agent_test_workflows"],
    )
    service = await build_service(settings)
    port = await service.start()
    channel = aio_channel(f"127.0.0.1:{port}", settings)
    yield agents_pb2_grpc.AgentServiceStub(channel)
    await channel.close()
    await service.stop(1.0)


@dataclass
class Held:
    """A held run's files — `record` (each node it executes, `<node> <pid>`), `release` (node b
    waits for it) — and the worker processes' settings."""

    settings: Settings
    record: Path
    release: Path

    def worker(self, number: int) -> WorkerProcess:
        return WorkerProcess(self.settings, self.record.parent / f"worker{number}.log")


@pytest.fixture
def held(infra: object, tmp_path: Path) -> Held:
    settings: Settings = infra.settings()  # type: ignore[attr-defined]
    return Held(settings, tmp_path / "record", tmp_path / "release")


async def create_held_run(api: agents_pb2_grpc.AgentServiceStub, tmp_path: Path) -> S.Run:
    """A `test-steps` run that records each node it executes (`<node> <pid>` lines in
    tmp_path/record) and holds in node b until tmp_path/release exists."""
    request = S.CreateRunRequest(run=S.Run(workflow="workflows/test-steps"))
    request.run.input.update(
        {"record": str(tmp_path / "record"), "release": str(tmp_path / "release")}
    )
    return (await api.CreateRun(request)).run


def node_b_started(record: Path) -> bool:
    return record.exists() and "b " in record.read_text()


async def wait_node_b_started(record: Path) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while not node_b_started(record):
        assert asyncio.get_running_loop().time() < deadline, "node b never started"
        await asyncio.sleep(0.05)


async def test_sigkilled_worker_is_replaced_and_the_run_resumes_from_its_checkpoint(
    api: agents_pb2_grpc.AgentServiceStub, held: Held, tmp_path: Path
) -> None:
    record, release = held.record, held.release
    first = held.worker(1)
    second: WorkerProcess | None = None
    try:
        await first.ready()
        run = await create_held_run(api, tmp_path)
        # A client follows the run live from the start, across the worker's death.
        stream = asyncio.create_task(collect(api, run.name, timeout=120))

        await wait_node_b_started(record)
        second = held.worker(2)
        await second.ready()
        first.kill()
        release.touch()

        done = await wait_status(api, run.name, S.RUN_STATUS_COMPLETED, timeout=90)
        assert done.output["done"] == ["a", "b", "c"]
        assert done.attempt == 2

        executions = [line.split() for line in record.read_text().splitlines()]
        nodes = [node for node, _ in executions]
        # a was checkpointed before the kill: not executed again. b was interrupted: re-run.
        assert nodes == ["a", "b", "b", "c"]
        pids = [int(pid) for _, pid in executions]
        assert pids[0] == pids[1] == first.proc.pid
        assert pids[2] == pids[3] == second.proc.pid

        live = await asyncio.wait_for(stream, 30)
        assert types(live)[-1] == "run.completed"
        # No gap: the live stream holds exactly what a replay of the whole run holds.
        replay = await collect(api, run.name)
        assert [e.sequence for e in live] == [e.sequence for e in replay]
        assert [e.sequence for e in live] == sorted({e.sequence for e in live})
        resumed = data(live, "run.resumed")
        assert resumed == [{"run": run.name, "attempt": 2, "reason": "redelivered"}]
        started = [(d["node"], d["attempt"]) for d in data(live, "run.node.started")]
        assert started == [("a", 1), ("b", 1), ("b", 2), ("c", 2)]
        tokens = [(d["text"], d["attempt"]) for d in data(live, "run.token")]
        assert tokens == [("A ", 1), ("B1 ", 1), ("B1 ", 2), ("B2 ", 2), ("C", 2)]
    finally:
        first.kill() if first.proc.poll() is None else None
        if second is not None:
            assert await second.stop() == 0, "the worker did not shut down cleanly on SIGTERM"
        await first.stop()


async def test_sigterm_hands_the_run_over_at_once(
    api: agents_pb2_grpc.AgentServiceStub, held: Held, tmp_path: Path
) -> None:
    record, release = held.record, held.release
    first, second = held.worker(1), held.worker(2)
    try:
        await first.ready()
        await second.ready()
        run = await create_held_run(api, tmp_path)
        await wait_node_b_started(record)
        owner, other = (
            (first, second) if f"b {first.proc.pid}" in record.read_text() else (second, first)
        )
        assert await owner.stop() == 0  # SIGTERM: stops the run where it is, naks the job
        release.touch()
        done = await wait_status(api, run.name, S.RUN_STATUS_COMPLETED, timeout=60)
        assert done.output["done"] == ["a", "b", "c"]
        executions = [line.split() for line in record.read_text().splitlines()]
        nodes = [node for node, _ in executions]
        assert nodes[0] == "a" and nodes.count("a") == 1
        assert executions[-1] == ["c", str(other.proc.pid)]
        # Nak'ed, not left to the ack wait: the other worker took b over at once.
        assert done.attempt == 2
    finally:
        await first.stop()
        await second.stop()
