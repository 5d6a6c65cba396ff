"""`amelia up --replicas 2`: two supervised processes of events, agents and rag on ports of
their own, every client (and the CLI, through mesh.json) given both addresses, `amelia status`
a row per replica; an agents replica SIGKILLed while its worker runs a run: the run completes
once on the other replica, and the supervisor starts the killed one again.

The real `amelia up` as a process, on the session's PostgreSQL and NATS (DATABASE_URL/NATS_URL
set, so it starts no embedded servers), with no `*_ADDRESS` in its environment."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_helpers import last_sequence, terminal_events, wait_all_finished
from scale_helpers import amelia_status
from service_process import python_path

from amelia.v1 import agents_pb2, agents_pb2_grpc
from amelia_cli.supervisor import read_state
from amelia_common.embedded import free_port, log_tail, process_alive
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings

TESTS_DIR = Path(__file__).parent.parent
REPLICATED = ("events", "agents", "rag")


def up_env(infra: Any, root: Path, settings: Settings) -> dict[str, str]:
    """A mesh on free ports over the session's servers; no `*_ADDRESS` (the mesh says)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_ADDRESS")}
    ports = (
        "EVENTS_GRPC_PORT",
        "AGENTS_GRPC_PORT",
        "RAG_GRPC_PORT",
        "PORT",
        "EVENTS_METRICS_PORT",
        "AGENTS_METRICS_PORT",
        "RAG_METRICS_PORT",
    )
    return (
        env
        | {name: str(free_port()) for name in ports}
        | {
            "DATABASE_URL": infra.database_url,
            "NATS_URL": infra.nats_url,
            "AMELIA_DATA_DIR": str(root / "data"),
            "EVENTS_STREAM": settings.EVENTS_STREAM,
            "RUNS_QUEUE_STREAM": settings.RUNS_QUEUE_STREAM,
            "LOCAL_MODEL": "off",
            "DEFAULT_MODEL": "offline:echo",
            "AGENT_WORKERS": "1",
            "AGENT_WORKFLOW_MODULES": "agent_test_workflows",
            "PYTHONPATH": python_path([TESTS_DIR / "agents"]),
            # A run whose worker died goes to another one within seconds.
            "RUN_ACK_WAIT_SECONDS": "3",
            "RUN_SWEEP_INTERVAL_SECONDS": "0.5",
            "RUN_REQUEUE_AFTER_SECONDS": "2",
            "RUN_RETRY_BACKOFF_SECONDS": "0.2",
            "RESTART_DELAY_SECONDS": "0.2",
            "GRPC_SHUTDOWN_GRACE_SECONDS": "2",
            "LOG_FORMAT": "json",
            "COLUMNS": "200",
        }
    )


@pytest.fixture
def mesh(infra: Any, tmp_path: Path) -> Iterator[tuple[dict[str, str], Settings]]:
    """`amelia up --replicas 2` in the foreground until SERVING; SIGTERM (as Ctrl-C) after."""
    settings = infra.settings(RUNS_QUEUE_STREAM=f"AMELIA_RUNS_UP_{uuid.uuid4().hex[:8]}")
    env = up_env(infra, tmp_path, settings)
    output = tmp_path / "up.out"
    with output.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "amelia_cli", "up", "--replicas", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 240
        while "Dashboard and HTTP API:" not in output.read_text():
            assert proc.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.5)
        yield env, settings
    finally:
        state = read_state(Path(env["AMELIA_DATA_DIR"])) or {}
        pids = [u["pid"] for u in state.get("units", {}).values() if u.get("pid")]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Shown by pytest only when the test failed: what each replica said last.
        for log in sorted((Path(env["AMELIA_DATA_DIR"]) / "logs").glob("*.log")):
            print(f"--- {log.name} (last lines)\n{log_tail(log, 30)}")
    # Ctrl-C stops every replica, not only the first of each service.
    assert pids and not [pid for pid in pids if process_alive(pid)], output.read_text()


def rows(output: str, part: str) -> list[list[str]]:
    """The cells of `amelia status`'s rows of `part`'s replicas (`events`, `events-2`)."""
    row = re.compile(rf"│ {part}(-\d+)? ")
    lines = [line for line in output.splitlines() if row.match(line)]
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]


async def serving_twice(env: dict[str, str]) -> str:
    """`amelia status` once both replicas of each service answer SERVING."""
    deadline = asyncio.get_running_loop().time() + 120
    while True:
        code, output = await asyncio.to_thread(amelia_status, env)
        shown = {part: [row[2] for row in rows(output, part)] for part in REPLICATED}
        if code == 0 and all(states == ["SERVING"] * 2 for states in shown.values()):
            return output
        assert asyncio.get_running_loop().time() < deadline, output
        await asyncio.sleep(1)


async def worker_pid(stub: agents_pb2_grpc.AgentServiceStub, run: str) -> int:
    """The pid of the worker process that holds `run` (its lease's `host:pid/loop`)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        queue = await stub.GetRunQueue(agents_pb2.GetRunQueueRequest(), timeout=10)
        for lease in queue.in_flight:
            if lease.run == run and lease.held and lease.worker:
                return int(lease.worker.split("/")[0].rsplit(":", 1)[1])
        assert asyncio.get_running_loop().time() < deadline, queue
        await asyncio.sleep(0.2)


async def test_up_with_two_replicas_serves_both_and_survives_losing_an_agents_replica(
    mesh: tuple[dict[str, str], Settings],
) -> None:
    env, settings = mesh
    data_dir = Path(env["AMELIA_DATA_DIR"])
    state = read_state(data_dir)
    assert state is not None
    # Each replicated service: two units RUNNING, both addresses recorded for the clients, a
    # metrics port of its own each.
    for part in REPLICATED:
        first, second = state["units"][part], state["units"][f"{part}-2"]
        assert first["state"] == second["state"] == "RUNNING"
        setting = f"{part.upper()}_ADDRESS"
        assert state["addresses"][setting] == [first["address"], second["address"]]
        assert first["address"] != second["address"]
        assert 0 not in (first["metrics_port"], second["metrics_port"])
        assert first["metrics_port"] != second["metrics_port"]

    # amelia status: a row per replica, at the addresses mesh.json records.
    output = await serving_twice(env)
    for part in REPLICATED:
        shown = [row[:2] for row in rows(output, part)]
        addresses = state["addresses"][f"{part.upper()}_ADDRESS"]
        assert shown == [[part, f"grpc://{addresses[0]}"], [f"{part}-2", f"grpc://{addresses[1]}"]]
    # An EVENTS_ADDRESS the user sets wins over mesh.json: one events row, the one named.
    first = state["units"]["events"]["address"]
    _code, output = await asyncio.to_thread(amelia_status, env | {"EVENTS_ADDRESS": first})
    assert [row[1] for row in rows(output, "events")] == [f"grpc://{first}"], output

    # A run held by one agents replica's worker, that replica SIGKILLed mid-run.
    agents = ",".join(state["addresses"]["AGENTS_ADDRESS"])
    units = {state["units"][name]["pid"]: name for name in ("agents", "agents-2")}
    start = await last_sequence(settings)
    async with aio_channel(agents, settings) as channel:
        stub = agents_pb2_grpc.AgentServiceStub(channel)
        request = agents_pb2.CreateRunRequest(
            run=agents_pb2.Run(workflow="workflows/test-sleep"), request_id=uuid.uuid4().hex
        )
        request.run.input.update({"seconds": 8})  # outlives a slow poll of the queue
        run = (await stub.CreateRun(request, timeout=30)).run.name
        pid = await worker_pid(stub, run)
        assert pid in units, (pid, units)
        killed = units[pid]
        os.kill(pid, signal.SIGKILL)

        # The run completes once, taken over by the other replica's worker.
        outcome = await wait_all_finished(stub, [run], timeout=180)
        assert outcome.statuses() == {"RUN_STATUS_COMPLETED": 1}
        assert outcome.runs[run].attempt >= 2
        assert await terminal_events(settings, start, [run]) == {run: 1}

    # The killed replica is started again, on its own port, and serves.
    deadline = time.monotonic() + 120
    while True:
        unit = (read_state(data_dir) or {}).get("units", {}).get(killed, {})
        if unit.get("restarts") == 1 and unit.get("state") == "RUNNING" and unit.get("pid"):
            break
        assert time.monotonic() < deadline, unit
        await asyncio.sleep(0.3)
    assert unit["pid"] != pid and unit["last_exit"] == "killed by SIGKILL"
    assert unit["address"] == state["units"][killed]["address"]
    await serving_twice(env)
