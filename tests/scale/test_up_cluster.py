"""`amelia up --cluster N`: the supervisor runs NATS as N clustered nodes on loopback (each a
unit restarted when it dies), the services it starts keep their streams on min(3, N) nodes, and
each service gets a metrics port of its own when its default one is held by another process."""

from __future__ import annotations

import asyncio
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scale_helpers import amelia_status
from test_cluster_cli import free_port_range

from amelia_cli.mesh import SERVICES
from amelia_cli.supervisor import MeshStartError, Supervisor, UnitState, read_state
from amelia_common.embedded import free_port, port_is_free
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

EVENTS = next(spec for spec in SERVICES if spec.name == "events")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process listens on (as another mesh's metrics endpoint would)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_up_with_a_cluster_supervises_every_node_and_keeps_streams_on_three(
    infra: Any, tmp_path: Path, held_port: int
) -> None:
    first = free_port_range(3)
    settings = infra.settings(
        NATS_URL="",
        AMELIA_DATA_DIR=tmp_path / "data",
        EMBEDDED_NATS_PORT=first,
        EVENTS_GRPC_PORT=free_port(),
        EVENTS_METRICS_PORT=held_port,
        LOCAL_MODEL="off",
    )
    supervisor = Supervisor(settings, services=[EVENTS], cluster=3)
    try:
        running = await supervisor.start_infrastructure()
        assert ",".join(f"nats://127.0.0.1:{first + i}" for i in range(3)) == running.NATS_URL
        assert running.EVENTS_STREAM_REPLICAS == running.RUNS_QUEUE_REPLICAS == 3
        await supervisor.start_services()
        await supervisor.wait_until_serving(180)

        # The events service made its stream on the cluster, kept on all 3 nodes.
        assert await stream_replicas(running, running.EVENTS_STREAM) == 3
        state = read_state(running.data_dir)
        assert state is not None
        assert state["nats_cluster"] == str(running.data_dir / "nats-cluster")
        nodes = [f"nats-n{i}" for i in (1, 2, 3)]
        assert [state["units"][n]["state"] for n in nodes] == ["RUNNING"] * 3

        # Its metrics port was taken: it serves its metrics on another one, recorded.
        metrics_port = state["units"]["events"]["metrics_port"]
        assert metrics_port not in (0, held_port)
        text = await scrape(metrics_port)
        assert "amelia_service_serving" in text

        # A node that dies is started again on its store.
        node = supervisor.servers[[s.name for s in supervisor.servers].index("nats-n2")]
        await asyncio.to_thread(node.server.kill)
        deadline = asyncio.get_running_loop().time() + 60
        while not (node.restarts == 1 and node.state == UnitState.RUNNING):
            assert asyncio.get_running_loop().time() < deadline, node.report()
            supervisor.check(supervisor.servers)
            await asyncio.sleep(0.2)
        assert node.pid() is not None

        # amelia status shows the cluster's nodes, every one up, and one meta leader.
        _code, output = await asyncio.to_thread(
            amelia_status, {"AMELIA_DATA_DIR": str(running.data_dir), "LOCAL_MODEL": "off"}
        )
        nodes_shown = [line for line in output.splitlines() if re.match(r"│ n[123] ", line)]
        assert len(nodes_shown) == 3, output
        cells = [[cell.strip() for cell in line.strip("│").split("│")] for line in nodes_shown]
        assert {row[3] for row in cells} in ({"n1"}, {"n2"}, {"n3"}), output  # one meta leader
        assert all(row[2].isdigit() for row in cells), output  # each node's pid: all up
    finally:
        await supervisor.stop()
    assert all(port_is_free(first + i) for i in range(3))


def test_a_cluster_with_a_nats_url_set_is_refused(infra: Any) -> None:
    with pytest.raises(MeshStartError, match="NATS_URL is set"):
        Supervisor(infra.settings(), cluster=3)


async def stream_replicas(settings: Settings, stream: str) -> int:
    nc = await connect_nats(settings, "test-up-cluster")
    try:
        info = await nc.jetstream(timeout=10).stream_info(stream)
        return int(info.config.num_replicas or 1)
    finally:
        await nc.close()


async def scrape(port: int) -> str:
    """The /metrics text at `port` (waited for: the endpoint starts with the service)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            reply = await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
            return str(reply.read().decode())
        except OSError:
            assert asyncio.get_running_loop().time() < deadline, f"no metrics on {port}"
            await asyncio.sleep(0.2)
