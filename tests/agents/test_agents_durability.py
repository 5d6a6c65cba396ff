"""Durable runs: a worker process SIGKILLed mid-run is replaced and the run resumes from its
last checkpoint; a frozen (SIGSTOPped) one loses its run to another worker once it has not
heartbeated for RUN_HEARTBEAT_TIMEOUT_SECONDS, and writes nothing more for it when it resumes
(fencing). Real `python -m amelia_agents.worker` processes on the real queue."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agents_helpers import S, collect, data, event_data, types, wait_status
from agents_helpers import WorkerProcess as SharedWorkerProcess
from faults_helpers import purge_queue, wait_node_b_started
from nats.js import JetStreamContext
from sqlalchemy import text

from amelia.v1 import agents_pb2_grpc, events_pb2
from amelia_agents import queue
from amelia_agents.server import build_service
from amelia_common.db import create_engine
from amelia_common.eventlog import EventLog, StartAt
from amelia_common.grpc_client import aio_channel
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

HERE = Path(__file__).parent
QUEUE = "AMELIA_RUNS_DURABILITY"
ACK_WAIT = 2
# A worker silent this long loses its run (a live one checks its lock every second).
HEARTBEAT_TIMEOUT = 3


class WorkerProcess(SharedWorkerProcess):
    """A worker on the durability test's queue, with the test workflows."""

    def __init__(self, settings: Settings, log: Path) -> None:
        env = {
            "RUNS_QUEUE_STREAM": QUEUE,
            "RUN_ACK_WAIT_SECONDS": str(ACK_WAIT),
            "RUN_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
            # A lost job is looked for every second (a run queued more than a second ago).
            "RUN_SWEEP_INTERVAL_SECONDS": "1",
            "RUN_REQUEUE_AFTER_SECONDS": "1",
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
        RUN_HEARTBEAT_TIMEOUT_SECONDS=HEARTBEAT_TIMEOUT,
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


def executions(record: Path) -> list[tuple[str, int]]:
    """The nodes executed so far, with the pid of the process that executed each."""
    lines = record.read_text().splitlines() if record.exists() else []
    return [(node, int(pid)) for node, pid in (line.split() for line in lines)]


def tokens_of(events: list[events_pb2.Event]) -> list[str]:
    return [event_data(e)["text"] for e in events if e.type == "run.token"]


def described(events: list[events_pb2.Event]) -> list[tuple[int, str, object, object]]:
    """Each event's sequence, type, attempt and token text (or node)."""
    return [
        (e.sequence, e.type, (d := event_data(e)).get("attempt"), d.get("text", d.get("node")))
        for e in events
    ]


async def run_events(settings: Settings, run: str) -> list[events_pb2.Event]:
    """Every event the log holds for `run`, in order (also any after its end)."""
    nc = await connect_nats(settings, "test-takeover-events")
    try:
        log = EventLog(nc, settings, source="test")
        async with log.read((), run, StartAt.beginning(), follow=False) as reader:
            return [event async for event in reader]
    finally:
        await nc.drain()


@pytest.mark.parametrize("job", ["redelivered", "lost"])
async def test_a_frozen_worker_loses_its_run_and_writes_nothing_once_resumed(
    api: agents_pb2_grpc.AgentServiceStub, held: Held, tmp_path: Path, job: str
) -> None:
    """The frozen worker's job goes to the other worker after the ack wait (`redelivered`), or
    is lost with the queue purged (`lost`): a reconciler takes the run over and queues it."""
    record = held.record
    first, second = held.worker(1), held.worker(2)
    frozen = False
    try:
        await first.ready()
        await second.ready()
        run = await create_held_run(api, tmp_path)

        # Whichever worker got the run is frozen inside node b (waiting for `release`), once
        # b's first token is stored: an event the NATS client still held when the process
        # froze would be sent when it resumes (docs/agents.md, Limits), not what is tested.
        await wait_node_b_started(record)
        deadline = asyncio.get_running_loop().time() + 60
        while "B1 " not in tokens_of(await run_events(held.settings, run.name)):
            assert asyncio.get_running_loop().time() < deadline, "b's first token never stored"
            await asyncio.sleep(0.05)
        owner_pid = executions(record)[-1][1]
        owner, other = (first, second) if owner_pid == first.proc.pid else (second, first)
        os.killpg(owner.proc.pid, signal.SIGSTOP)
        frozen, stopped = True, time.monotonic()
        if job == "lost":
            await purge_queue(held.settings.model_copy(update={"RUNS_QUEUE_STREAM": QUEUE}))

        # The other takes it over once the frozen one has been silent long enough, and
        # continues from the checkpoint after a: b again (its own), then c.
        await wait_node_b_started(record, other.proc.pid, timeout=90)
        # A figure for docs/agents.md (-rP shows it), not an assertion.
        print(f"{job}: node b again {time.monotonic() - stopped:.1f} s after SIGSTOP")
        if job == "redelivered":
            assert "took a run over from a holder that stopped heartbeating" in other.log_text()
        held.release.touch()
        done = await wait_status(api, run.name, S.RUN_STATUS_COMPLETED, timeout=90)
        assert done.output["done"] == ["a", "b", "c"]
        assert done.attempt == 2
        expected = [
            ("a", owner_pid),
            ("b", owner_pid),
            ("b", other.proc.pid),
            ("c", other.proc.pid),
        ]
        assert executions(record) == expected
        await other.wait_log("run left", timeout=60)  # its end events are stored
        before = await run_events(held.settings, run.name)
        assert [e.type for e in before].count("run.completed") == 1
        assert before[-1].type == "run.completed"
        assert event_data(before[-1])["attempt"] == 2

        # Resumed, the frozen worker finds b released at once: it must write nothing more.
        os.killpg(owner.proc.pid, signal.SIGCONT)
        frozen = False
        await owner.wait_log("lost the run: another worker took it over", timeout=60)
        assert (await api.GetRun(S.GetRunRequest(name=run.name))).run == done
        after = await run_events(held.settings, run.name)
        assert described(after) == described(before)
        assert executions(record) == expected  # c not run by the frozen one, b not a third time
        assert owner.proc.poll() is None  # it goes on working
    finally:
        if frozen:
            os.killpg(owner.proc.pid, signal.SIGCONT)
        await first.stop()
        await second.stop()


async def test_a_live_worker_in_a_long_node_keeps_its_run(
    api: agents_pb2_grpc.AgentServiceStub, held: Held, tmp_path: Path
) -> None:
    """A second job of the run meets the lock of a holder that heartbeats: it is given back,
    again and again past the heartbeat timeout, and the run is never taken over."""
    record = held.record
    first, second = held.worker(1), held.worker(2)
    try:
        await first.ready()
        await second.ready()
        run = await create_held_run(api, tmp_path)
        await wait_node_b_started(record)
        owner_pid = executions(record)[-1][1]
        other = second if owner_pid == first.proc.pid else first

        settings = held.settings.model_copy(update={"RUNS_QUEUE_STREAM": QUEUE})
        nc = await connect_nats(settings, "test-second-job")
        try:
            js = nc.jetstream()
            before = (await js.consumer_info(QUEUE, queue.CONSUMER)).delivered.consumer_seq
            await queue.enqueue(js, settings, uuid.UUID(run.name.removeprefix("runs/")), "again")
            # The other worker is given it four times: three waits of at least the heartbeat
            # timeout less the holder's silence (under a second) each, longer than the timeout.
            await other.wait_until(
                lambda: _delivered(js, before + 4), "given the second job four times", 120
            )
        finally:
            await nc.drain()
        held.release.touch()
        done = await wait_status(api, run.name, S.RUN_STATUS_COMPLETED, timeout=90)
        assert done.attempt == 1
        assert executions(record) == [("a", owner_pid), ("b", owner_pid), ("c", owner_pid)]
        assert "took a run over" not in other.log_text()
    finally:
        await first.stop()
        await second.stop()


async def _delivered(js: JetStreamContext, count: int) -> bool:
    """Whether the run queue's consumer has made `count` deliveries in all."""
    info = await js.consumer_info(QUEUE, queue.CONSUMER)
    return info.delivered.consumer_seq >= count


async def test_a_step_whose_checkpoint_was_lost_with_its_worker_goes_on(
    api: agents_pb2_grpc.AgentServiceStub, held: Held, tmp_path: Path
) -> None:
    """A step's checkpoint is written behind (`checkpoints.RunSaver`): a worker that dies (or
    is taken over) while it is written leaves the checkpoint before it and the step's stored
    writes. LangGraph's `next` is then empty (tasks with writes are left out): the next worker
    must go on from there, not record the run as ended with the state so far."""
    record, release = held.record, held.release
    first = held.worker(1)
    second: WorkerProcess | None = None
    try:
        await first.ready()
        run = await create_held_run(api, tmp_path)
        await wait_node_b_started(record)
        first.kill()
        # The checkpoint after a, as if it had not been written when the worker died.
        thread = run.thread.removeprefix("threads/")
        engine = create_engine(held.settings)
        try:
            async with engine.begin() as conn:
                deleted = await conn.execute(
                    text(
                        "DELETE FROM checkpoints WHERE thread_id = :t AND checkpoint_id = "
                        "(SELECT max(checkpoint_id) FROM checkpoints WHERE thread_id = :t)"
                    ),
                    {"t": thread},
                )
                assert deleted.rowcount == 1  # type: ignore[attr-defined]
        finally:
            await engine.dispose()
        second = held.worker(2)
        await second.ready()
        release.touch()
        done = await wait_status(api, run.name, S.RUN_STATUS_COMPLETED, timeout=90)
        assert done.output["done"] == ["a", "b", "c"]
        # a's writes were stored: not executed again.
        assert [node for node, _ in executions(record)] == ["a", "b", "b", "c"]
    finally:
        await first.stop()
        if second is not None:
            await second.stop()
