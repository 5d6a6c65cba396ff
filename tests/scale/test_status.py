"""`amelia status` on a scaled-out mesh, read at 80 columns: a row per replica of a service given
as a list of addresses (and one a `dns:///` name resolves to), each stream of the 3-node NATS
cluster with its leader and current copies, and the run queue (runs running, workers)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from agents_helpers import running_agents, wait_status
from scale_helpers import LOG_LINE, amelia_status

from amelia.v1 import agents_pb2
from amelia_cli.health import replica_addresses
from amelia_common.embedded import free_port
from amelia_common.settings import Settings
from amelia_events.server import build_service as build_events


@asynccontextmanager
async def events_replicas(settings: Settings, count: int) -> AsyncIterator[list[str]]:
    """`count` events services in this process; their addresses."""
    async with AsyncExitStack() as stack:
        found = []
        for _ in range(count):
            service = await build_events(settings)
            port = await service.start()
            stack.push_async_callback(service.stop, 0.5)
            found.append(f"127.0.0.1:{port}")
        yield found


async def test_status_shows_every_replica_the_cluster_leaders_and_the_run_queue(
    cluster_settings: Settings, tmp_path: Path
) -> None:
    settings = cluster_settings.model_copy(
        update={
            "RUNS_QUEUE_STREAM": f"AMELIA_RUNS_STATUS_{uuid.uuid4().hex[:6].upper()}",
            "AGENT_WORKFLOW_MODULES": ["agent_test_workflows"],
            "AGENT_WORKERS": 1,
        }
    )
    async with events_replicas(settings, 2) as events:
        agents_settings = settings.model_copy(update={"EVENTS_ADDRESS": ",".join(events)})
        async with running_agents(agents_settings) as agents:
            request = agents_pb2.CreateRunRequest(
                run=agents_pb2.Run(workflow="workflows/test-sleep")
            )
            request.run.input.update({"seconds": 120})
            run = (await agents.stub.CreateRun(request, timeout=30)).run
            await wait_status(agents.stub, run.name, agents_pb2.RUN_STATUS_RUNNING, timeout=60)
            agents_address = f"127.0.0.1:{agents.service.bound_port}"
            try:
                code, output = await asyncio.to_thread(
                    amelia_status,
                    {
                        "AMELIA_DATA_DIR": str(tmp_path / "no-mesh-here"),
                        "DATABASE_URL": settings.DATABASE_URL,
                        "NATS_URL": settings.NATS_URL,
                        "EVENTS_STREAM": settings.EVENTS_STREAM,
                        "RUNS_QUEUE_STREAM": settings.RUNS_QUEUE_STREAM,
                        "EVENTS_ADDRESS": ",".join(events),
                        "AGENTS_ADDRESS": agents_address,
                        "RAG_ADDRESS": f"127.0.0.1:{free_port()}",  # no rag replica runs
                        "PORT": str(free_port()),
                        "LOCAL_MODEL": "off",
                    },
                )
            finally:
                await agents.stub.CancelRun(agents_pb2.CancelRunRequest(name=run.name))

    assert code == 1, output  # rag and the gateway are down
    # (the services in this process log to the same stdout: their lines are not the status)
    lines = [line for line in output.splitlines() if not LOG_LINE.match(line)]
    assert max(len(line) for line in lines) <= 80, output
    for address in events:
        assert any(address in line and "SERVING" in line for line in lines), output
    assert any(line.startswith("│ rag") and "UNREACHABLE" in line for line in lines), output
    for stream in (settings.EVENTS_STREAM, settings.RUNS_QUEUE_STREAM):
        row = next(line for line in lines if stream[:14] in line)
        assert re.search(r"\bn[123]\b", row), row  # its leader
    # Two copies of each stream, each with its state: "current", or "behind N" for the instant a
    # copy has not yet stored the newest event (CI saw "n3 behind 1" while the run published).
    assert len(re.findall(r"\bn[123] (?:current|behind \d+)", output)) >= 4, output
    assert re.search(r"runs running\s*│\s*1\b", output), output
    assert re.search(r"workers\s*│\s*1\b", output), output
    assert re.search(r"1 busy", output), output


def test_each_replica_of_a_target_is_asked_alone() -> None:
    assert replica_addresses("127.0.0.1:1, 127.0.0.1:2") == ["127.0.0.1:1", "127.0.0.1:2"]
    assert "127.0.0.1:50051" in replica_addresses("dns:///localhost:50051")
    assert replica_addresses("dns:///no-such-host.invalid:1") == ["dns:///no-such-host.invalid:1"]
