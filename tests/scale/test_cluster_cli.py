"""`amelia cluster up|status|down`: a 3-node NATS cluster on loopback that anyone can start, and
whose printed settings are enough to use it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js.errors import NoStreamResponseError
from typer.testing import CliRunner

from amelia_cli.main import app
from amelia_common.nats_client import connect_nats
from amelia_common.nats_cluster import MONITOR_PORT_OFFSET, ROUTE_PORT_OFFSET
from amelia_common.ports import free_port_block, port_is_free
from amelia_common.settings import Settings, get_settings


def free_port_range(nodes: int) -> int:
    """A first client port whose client, route and monitoring ports are all free."""
    return free_port_block(
        [offset + i for offset in (0, ROUTE_PORT_OFFSET, MONITOR_PORT_OFFSET) for i in range(nodes)]
    )


def settings_printed(output: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in output.splitlines() if line.split("=", 1)[0].isupper()
    )


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The CLI's data directory; its process-wide settings are read afresh, and again after."""
    monkeypatch.setenv("AMELIA_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


def test_cluster_up_prints_settings_that_reach_a_replicated_jetstream(data_dir: Path) -> None:
    runner = CliRunner()
    env = {"AMELIA_DATA_DIR": str(data_dir)}
    port = free_port_range(3)
    try:
        up = runner.invoke(app, ["cluster", "up", "--port", str(port)], env=env)
        assert up.exit_code == 0, up.output
        printed = settings_printed(up.output)
        assert printed["NATS_URL"] == ",".join(f"nats://127.0.0.1:{port + i}" for i in range(3))
        assert printed["EVENTS_STREAM_REPLICAS"] == printed["RUNS_QUEUE_REPLICAS"] == "3"

        asyncio.run(_store_on_three_nodes(Settings(_env_file=None, **printed)))

        status = runner.invoke(app, ["cluster", "status"], env={**env, "COLUMNS": "200"})
        assert status.exit_code == 0, status.output
        assert "SCALE_CLI" in status.output
        assert status.output.count("current") == 2  # the leader's two followers
        # Starting it again reuses the running nodes.
        again = runner.invoke(app, ["cluster", "up", "--port", str(port)], env=env)
        assert again.exit_code == 0, again.output
    finally:
        down = runner.invoke(app, ["cluster", "down", "--purge"], env=env)
    assert down.exit_code == 0, down.output
    assert all(port_is_free(port + i) for i in range(3))
    gone = runner.invoke(app, ["cluster", "status"], env=env)
    assert gone.exit_code == 1
    assert "amelia cluster up" in gone.output


async def _store_on_three_nodes(settings: Settings) -> None:
    nc = await connect_nats(settings, "test-cluster-cli")
    try:
        js = nc.jetstream(timeout=30)
        await js.add_stream(
            name="SCALE_CLI", subjects=["scale.cli"], num_replicas=settings.EVENTS_STREAM_REPLICAS
        )
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            # A new R3 stream answers once its nodes have elected its leader: until then JetStream
            # has no responder for the subject (seen in CI right after add_stream).
            try:
                await js.publish("scale.cli", b"kept on three nodes")
                break
            except NoStreamResponseError:
                assert asyncio.get_running_loop().time() < deadline, "the stream never answered"
                await asyncio.sleep(0.2)
        while True:
            info = await js.stream_info("SCALE_CLI")
            peers = info.cluster.replicas if info.cluster else None
            if peers and len(peers) == 2 and all(p.current for p in peers):
                return
            assert asyncio.get_running_loop().time() < deadline, info.cluster
            await asyncio.sleep(0.2)
    finally:
        await nc.close()
