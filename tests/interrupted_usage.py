"""A run with an interrupted attempt, made for real for the tests of what its usage says
(`TokenUsage.interrupted_*`, QA s26 H2): workflow `test-usage-steps` (usage_test_workflows.py)
runs nodes a, b, c with a model call each on a fake OpenAI-compatible server; its first worker
process is SIGKILLed (or stopped by SIGTERM) in node b after b's call, and a second worker runs
b again and finishes the run. Worker processes on a queue of their own, served by an agents
service with no workers (`api_settings`)."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from agents_helpers import S
from agents_helpers import WorkerProcess as SharedWorkerProcess

from amelia.v1 import agents_pb2_grpc
from amelia_common.settings import Settings

HERE = Path(__file__).parent
QUEUE = "AMELIA_RUNS_INTERRUPTED_USAGE"
WORKFLOW = "workflows/test-usage-steps"
ACK_WAIT = 2
HEARTBEAT_TIMEOUT = 3
QUEUE_SETTINGS = {
    "RUNS_QUEUE_STREAM": QUEUE,
    "RUN_ACK_WAIT_SECONDS": ACK_WAIT,
    "RUN_HEARTBEAT_TIMEOUT_SECONDS": HEARTBEAT_TIMEOUT,
    "AGENT_WORKFLOW_MODULES": ["usage_test_workflows"],
}
# Each node's call: the fake server says 11 prompt tokens, and says the prompt back (a: 3 tokens
# out, b: 5, c: 7: usage_test_workflows).
CALL_IN = 11
OUT = {"a": 3, "b": 5, "c": 7}


def api_settings(infra: object, events_address: str) -> Settings:
    """An agents service with no workers of its own, on the workers' queue."""
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        EVENTS_ADDRESS=events_address, AGENT_WORKERS=0, **QUEUE_SETTINGS
    )
    return settings


class WorkerProcess(SharedWorkerProcess):
    def __init__(self, settings: Settings, log: Path) -> None:
        env = {
            "RUNS_QUEUE_STREAM": QUEUE,
            "RUN_ACK_WAIT_SECONDS": str(ACK_WAIT),
            "RUN_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
            "RUN_SWEEP_INTERVAL_SECONDS": "1",
            "RUN_REQUEUE_AFTER_SECONDS": "1",
            "AGENT_WORKFLOW_MODULES": "usage_test_workflows",
        }
        super().__init__(settings, log, env=env, pythonpath=[HERE])


@dataclass
class Files:
    """The run's `record` (`<node> <pid>` per model call made) and `release` (b waits for it)."""

    settings: Settings
    directory: Path

    @property
    def record(self) -> Path:
        return self.directory / "record"

    @property
    def release(self) -> Path:
        return self.directory / "release"

    def worker(self, number: int) -> WorkerProcess:
        return WorkerProcess(self.settings, self.directory / f"worker{number}.log")

    def nodes(self) -> list[str]:
        return [line.split()[0] for line in self.record.read_text().splitlines()]


async def _b_called(files: Files, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (files.record.exists() and "b" in files.nodes()):
        assert asyncio.get_running_loop().time() < deadline, "node b never made its call"
        await asyncio.sleep(0.05)


async def _usage_stored(
    api: agents_pb2_grpc.AgentServiceStub, name: str, output_tokens: int, timeout: float = 30
) -> None:
    """Until the run's usage has `output_tokens` (a call's usage is written behind it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = (await api.GetRun(S.GetRunRequest(name=name))).run
        if run.usage.output_tokens >= output_tokens:
            return
        assert asyncio.get_running_loop().time() < deadline, f"usage never stored: {run.usage}"
        await asyncio.sleep(0.05)


async def interrupted_run(
    api: agents_pb2_grpc.AgentServiceStub, files: Files, model: str, how: str = "sigkill"
) -> str:
    """Make the run (`model`: the fake server's `openai:transcript@…`), interrupt its first
    attempt in node b after b's call — `how`: "sigkill", "sigterm" or "sigstop" (frozen, taken
    over by the second worker, then let go on) — let a second worker finish it; its name once
    COMPLETED (with "sigstop", the frozen worker may write b's usage late, after that)."""
    first = files.worker(1)
    second: WorkerProcess | None = None
    frozen = False
    try:
        await first.ready()
        request = S.CreateRunRequest(run=S.Run(workflow=WORKFLOW))
        request.run.input.update(
            {"model": model, "record": str(files.record), "release": str(files.release)}
        )
        name = (await api.CreateRun(request)).run.name
        await _b_called(files)
        if how == "sigkill":
            # Killed once a's and b's calls are stored (within half a second of each call).
            await _usage_stored(api, name, OUT["a"] + OUT["b"])
            second = files.worker(2)
            await second.ready()
            first.kill()
        elif how == "sigterm":
            # It stops the run where it is, storing its calls' usage on the way out.
            assert await first.stop() == 0
            second = files.worker(2)
            await second.ready()
        else:
            # Frozen at once: b's usage may still be held (written half a second after the call),
            # to be written when it resumes — after the second worker took the run over.
            first.freeze()
            frozen = True
            second = files.worker(2)
            await second.ready()
            deadline = asyncio.get_running_loop().time() + 90
            while files.nodes().count("b") < 2:
                assert asyncio.get_running_loop().time() < deadline, "never taken over"
                await asyncio.sleep(0.1)
        files.release.touch()
        deadline = asyncio.get_running_loop().time() + 90
        while True:
            run = (await api.GetRun(S.GetRunRequest(name=name))).run
            if run.status == S.RUN_STATUS_COMPLETED:
                break
            assert run.status in (S.RUN_STATUS_QUEUED, S.RUN_STATUS_RUNNING), run
            assert asyncio.get_running_loop().time() < deadline, f"never completed: {run}"
            await asyncio.sleep(0.1)
        assert files.nodes() == ["a", "b", "b", "c"]
        if frozen:
            os.killpg(first.proc.pid, signal.SIGCONT)
            frozen = False
            await first.wait_log("lost the run: another worker took it over", timeout=60)
        return name
    finally:
        if frozen:
            os.killpg(first.proc.pid, signal.SIGCONT)
        if first.proc.poll() is None:
            first.kill()
        if second is not None:
            await second.stop()
        await first.stop()
