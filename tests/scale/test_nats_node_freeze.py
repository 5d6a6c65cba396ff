"""One NATS node of three frozen (SIGSTOP: its sockets stay open, nothing answers) and left
frozen: the events service connected to it notices its PINGs going unanswered, moves to another
node, and publishing and a live StreamEvents go on through the two nodes left (the events
stream is kept on all three, R3). Before, nats-py's 5 s x 3 pings left the mesh waiting on the
frozen node for 15-20 s; this test does not time it (the figure is in docs/scale-out.md), it
asserts what a client sees: every event published during the freeze acknowledged once and
streamed in order, with the node still frozen."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import uuid
from pathlib import Path

from rich.console import Console
from scale_helpers import publish_until_acknowledged, replicas, wait_for

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_cli.commands.status import nodes_table
from amelia_common.grpc_client import aio_channel
from amelia_common.nats_cluster import NatsCluster, NatsNode
from amelia_common.settings import Settings

EVENTS_CONNECTION = "amelia-events"  # the name the events service connects to NATS with
DURING_FREEZE = 10


def holding(nodes: list[NatsNode], name: str) -> list[NatsNode]:
    """Which of `nodes` a client connection called `name` is on now (asked over monitoring)."""
    found = []
    for node in nodes:
        connz = node.monitor("connz") or {}
        if any(c.get("name") == name for c in connz.get("connections") or []):
            found.append(node)
    return found


async def test_the_events_service_moves_off_a_frozen_nats_node(
    nats_cluster: NatsCluster, cluster_settings: Settings, tmp_path: Path
) -> None:
    async with (
        replicas("events", cluster_settings, tmp_path, 1) as group,
        aio_channel(group[0].address, cluster_settings) as channel,
    ):
        stub = events_pb2_grpc.EventServiceStub(channel)
        subject = f"freeze/{uuid.uuid4().hex}"

        def event() -> events_pb2.Event:
            return events_pb2.Event(
                id=uuid.uuid4().hex, type="test.freeze", source="tests", subject=subject
            )

        first = await publish_until_acknowledged(stub, event())
        stream = stub.StreamEvents(
            events_pb2.StreamEventsRequest(
                filter=events_pb2.EventFilter(subject=subject), after_sequence=first - 1
            )
        )
        received: list[int] = []

        async def receive() -> None:
            async for message in stream:
                received.append(message.event.sequence)

        receiving = asyncio.create_task(receive())
        await wait_for(lambda: received == [first], "the live stream did not start")

        # The node the service is connected to (found, not guessed), frozen and left so.
        await wait_for(
            lambda: len(holding(nats_cluster.nodes, EVENTS_CONNECTION)) == 1,
            "the events service is not connected to one node",
        )
        [frozen] = holding(nats_cluster.nodes, EVENTS_CONNECTION)
        pid = frozen.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            acknowledged = [
                await publish_until_acknowledged(stub, event()) for _ in range(DURING_FREEZE)
            ]
            # Answered while the node is still frozen: by the service, moved to a live node.
            assert frozen.monitor("varz") is None
            live = [n for n in nats_cluster.nodes if n is not frozen]
            await wait_for(
                lambda: len(holding(live, EVENTS_CONNECTION)) == 1,
                "the events service is not on a live node",
            )
            await wait_for(
                lambda: len(received) == 1 + DURING_FREEZE,
                lambda: f"streamed {received}, acknowledged {first} + {acknowledged}",
            )
            # Every acknowledged event streamed once, in order, none lost or twice.
            assert received == [first, *acknowledged]
            assert acknowledged == sorted(set(acknowledged))
        finally:
            os.kill(pid, signal.SIGCONT)
            stream.cancel()
            receiving.cancel()


def test_status_names_the_frozen_node(nats_cluster: NatsCluster) -> None:
    frozen = nats_cluster.nodes[-1]
    pid = frozen.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        console = Console(width=80, file=io.StringIO(), color_system=None)
        console.print(nodes_table(nats_cluster))
        output = console.file.getvalue()  # type: ignore[attr-defined]
    finally:
        os.kill(pid, signal.SIGCONT)
    row = next(line for line in output.splitlines() if line.startswith(f"│ {frozen.name} "))
    assert str(pid) in row and "no answer" in row, output  # running, silent
    assert f"{frozen.name}: running but not answering" in output, output
    for node in nats_cluster.nodes[:-1]:
        row = next(line for line in output.splitlines() if line.startswith(f"│ {node.name} "))
        assert "no answer" not in row, output
