"""A wait for a run's result, and a run's HTTP stream, outlive the agents process serving them
(QA findings 1 and 7): with two replicas, one SIGKILLed under WaitRun calls (gRPC and the
gateway's `:wait`) and the gateway's `:stream` routes, every waiter gets its run's end and every
HTTP stream has each of the run's events once, in order; with one replica killed and started
again under `amelia runs wait`, the CLI prints the completed run. Real processes throughout."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from scale_helpers import Replica, addresses, all_serving, launch
from service_process import until_connected

from amelia.v1 import agents_pb2, agents_pb2_grpc
from amelia_agents.checkpoints import open_checkpointer
from amelia_common.grpc_client import UNREACHED_SECONDS, aio_channel
from amelia_common.settings import Settings

RUNS = 4
AGENTS_ENV = {
    "AGENT_WORKERS": "2",
    "RUN_ACK_WAIT_SECONDS": "3",
    "RUN_SWEEP_INTERVAL_SECONDS": "0.5",
    "RUN_REQUEUE_AFTER_SECONDS": "2",
    "RUN_RETRY_BACKOFF_SECONDS": "0.2",
}


async def events_and_agents(
    infra: Any, logs: Path, count: int
) -> tuple[Settings, list[Replica], dict[str, str], list[Replica]]:
    """The settings, an events replica, the agents replicas' environment and `count` agents
    replicas (launched; `all_serving` waits for them)."""
    settings: Settings = infra.settings(RUNS_QUEUE_STREAM="AMELIA_RUNS_WAIT_SCALE")
    # LangGraph's tables made before replicas start (two that race to make them hang).
    pool, _saver = await open_checkpointer(settings, max_size=2)
    await pool.close()
    events = launch("events", settings, logs, 1)
    env = {"EVENTS_ADDRESS": addresses(events), **AGENTS_ENV}
    return settings, events, env, launch("agents", settings, logs, count, env=env)


def gateway_before(
    settings: Settings, tmp_path: Path, events: list[Replica], agents: list[Replica]
) -> list[Replica]:
    """A gateway replica (launched) in front of `events` and `agents`."""
    env = {"EVENTS_ADDRESS": addresses(events), "AGENTS_ADDRESS": addresses(agents)}
    return launch("gateway", settings, tmp_path, 1, env=env)


async def create_runs(
    stub: agents_pb2_grpc.AgentServiceStub, count: int, words: int = 12
) -> list[str]:
    """`count` echo runs of `words` tokens 0.5 s apart (12: ~6 s, long enough to be killed
    under)."""
    names = []
    for _ in range(count):
        run = agents_pb2.Run(workflow="workflows/echo")
        run.input.update({"message": " ".join(f"word{i}" for i in range(words)), "delay_ms": 500})
        reply = await stub.CreateRun(agents_pb2.CreateRunRequest(run=run), timeout=30)
        names.append(reply.run.name)
    return names


async def until(condition: Any, what: str, timeout: float = 90) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def read_stream(http: httpx.AsyncClient, name: str, lines: list[dict[str, Any]]) -> None:
    async with http.stream("GET", f"/v1/{name}:stream") as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line:
                lines.append(json.loads(line))


async def create_and_read(http: httpx.AsyncClient, lines: list[dict[str, Any]]) -> None:
    """`POST /v1/runs:stream` of an echo run as long as `create_runs`'s, read to its end."""
    message = " ".join(f"word{i}" for i in range(12))
    body = {"run": {"workflow": "workflows/echo", "input": {"message": message, "delay_ms": 500}}}
    async with http.stream("POST", "/v1/runs:stream", json=body) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line:
                lines.append(json.loads(line))


async def replayed(stub: agents_pb2_grpc.AgentServiceStub, name: str) -> list[int]:
    """The run's event sequences, read from the log after it ended."""
    call = stub.StreamRun(agents_pb2.StreamRunRequest(name=name), timeout=60)
    return [reply.event.sequence async for reply in call]


async def test_waits_and_http_streams_outlive_the_agents_replica_serving_them(
    infra: Any, tmp_path: Path
) -> None:
    settings, events, _env, agents = await events_and_agents(infra, tmp_path, 2)
    gateways = gateway_before(settings, tmp_path, events, agents)
    async with (
        all_serving(events, agents, gateways),
        aio_channel(addresses(agents), settings) as channel,
        httpx.AsyncClient(base_url=f"http://{gateways[0].address}", timeout=180) as http,
    ):
        stub = agents_pb2_grpc.AgentServiceStub(channel)
        names = await create_runs(stub, RUNS)
        grpc_waits = [
            asyncio.ensure_future(stub.WaitRun(agents_pb2.WaitRunRequest(name=n), timeout=180))
            for n in names
        ]
        http_waits = [asyncio.ensure_future(http.post(f"/v1/{n}:wait", json={})) for n in names]
        streamed: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        streams = [asyncio.ensure_future(read_stream(http, n, streamed[n])) for n in names]
        # Every run is producing tokens, and every stream has shown some: all are in flight.
        await until(
            lambda: all(len(lines) >= 3 for lines in streamed.values()),
            f"the runs did not stream: {streamed}",
        )
        assert not any(w.done() for w in grpc_waits + http_waits)
        agents[0].kill()

        for name, wait in zip(names, grpc_waits, strict=True):
            run = (await wait).run
            assert run.status == agents_pb2.RUN_STATUS_COMPLETED, (name, run)
        for name, reply in zip(names, await asyncio.gather(*http_waits), strict=True):
            assert reply.status_code == 200, (name, reply.text)
            assert reply.json()["run"]["status"] == "RUN_STATUS_COMPLETED", reply.text
        await asyncio.gather(*streams)
        for name, lines in streamed.items():
            assert all("result" in line for line in lines), (name, lines[-1])
            sequences = [int(line["result"]["event"]["sequence"]) for line in lines]
            # Each event of the run once, in order, the same as the log has them.
            assert sequences == await replayed(stub, name), name
            assert lines[-1]["result"]["event"]["type"] == "run.completed", lines[-1]


def restarted(replica: Replica, settings: Settings, env: dict[str, str], log: Path) -> Replica:
    """`replica`'s service started again on its port (as a supervisor restarts it)."""
    again = Replica(
        replica.service, settings, log, env={**env, "AGENTS_GRPC_PORT": str(replica.port)}
    )
    again.port = replica.port
    return again


async def test_the_clis_wait_outlives_a_restart_of_the_only_agents_replica(
    infra: Any, tmp_path: Path
) -> None:
    settings, events, env, agents = await events_and_agents(infra, tmp_path, 1)
    async with (
        all_serving(events, agents),
        aio_channel(addresses(agents), settings) as channel,
    ):
        stub = agents_pb2_grpc.AgentServiceStub(channel)
        (name,) = await create_runs(stub, 1, words=40)
        cli = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "amelia_cli", "runs", "wait", name, "--timeout", "150"),
            env={
                **os.environ,
                "AGENTS_ADDRESS": agents[0].address,
                "AMELIA_DATA_DIR": str(tmp_path / "cli"),
                "COLUMNS": "200",
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            # The CLI's wait has reached the replica (connected), and waited there a while:
            # longer than a call to a service that is down takes to fail (UNREACHED_SECONDS) …
            await until_connected(cli.pid, agents[0].port)
            await asyncio.sleep(UNREACHED_SECONDS + 1)
            run = (await stub.GetRun(agents_pb2.GetRunRequest(name=name), timeout=30)).run
            assert run.status == agents_pb2.RUN_STATUS_RUNNING, run
            # … when the only replica is killed, and started again a moment later.
            agents[0].kill()
            again = restarted(agents[0], settings, env, tmp_path / "agents-again.log")
            async with all_serving([again]):
                out, errors = await asyncio.wait_for(cli.communicate(), timeout=170)
        finally:
            if cli.returncode is None:
                cli.kill()
                await cli.wait()
    assert cli.returncode == 0, (out, errors)
    shown = json.loads(out)
    assert shown["name"] == name and shown["status"] == "RUN_STATUS_COMPLETED", out


async def test_a_run_created_and_streamed_over_http_outlives_a_restart_of_the_agents_replica(
    infra: Any, tmp_path: Path
) -> None:
    """`POST /v1/runs:stream` with the only agents replica killed mid-run and started again:
    the gateway goes on with StreamRun of the run its first line named, and the HTTP client
    reads every event of the run once, in order, to its end."""
    settings, events, env, agents = await events_and_agents(infra, tmp_path, 1)
    gateways = gateway_before(settings, tmp_path, events, agents)
    async with (
        all_serving(events, agents, gateways),
        aio_channel(addresses(agents), settings) as channel,
        httpx.AsyncClient(base_url=f"http://{gateways[0].address}", timeout=180) as http,
    ):
        lines: list[dict[str, Any]] = []
        stream = asyncio.ensure_future(create_and_read(http, lines))
        await until(lambda: len(lines) >= 4 or stream.done(), f"it did not stream: {lines}")
        assert not stream.done(), lines
        agents[0].kill()
        again = restarted(agents[0], settings, env, tmp_path / "agents-again.log")
        async with all_serving([again]):
            await asyncio.wait_for(stream, timeout=170)
            assert all("result" in line for line in lines), lines[-1]
            name = lines[0]["result"]["run"]["name"]
            sequences = [int(line["result"]["event"]["sequence"]) for line in lines[1:]]
            stub = agents_pb2_grpc.AgentServiceStub(channel)
            assert sequences == await replayed(stub, name)
        assert lines[-1]["result"]["event"]["type"] == "run.completed", lines[-1]
        resumed = [
            line
            for line in gateways[0].log_text().splitlines()
            if "stream dropped; resuming" in line and '"rpc": "CreateAndStreamRun"' in line
        ]
        assert resumed, "the gateway did not resume the stream"
