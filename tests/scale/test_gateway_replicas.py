"""A WebSocket client of two gateway replicas (over two events replicas, on the 3-node cluster)
whose gateway is SIGKILLed mid-stream: it reconnects to the other replica with `since` = the
last sequence it received, and sees every event published, in order, none twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import pytest
import websockets
from scale_support import Replica, addresses, replicas
from test_cluster_events import publish_until_acknowledged

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings

EVENTS = 60


async def receive(url: str, subject: str, since: int | str, got: list[int]) -> None:
    """Subscribe to `subject` through the gateway at `url`, appending sequences to `got`, until
    the connection breaks."""
    with contextlib.suppress(websockets.ConnectionClosed, OSError):
        async with websockets.connect(url, open_timeout=30) as ws:
            await ws.send(
                json.dumps(
                    {"type": "subscribe", "id": "s", "filter": {"subject": subject}, "since": since}
                )
            )
            async for text in ws:
                message = json.loads(text)
                if message["type"] == "event":
                    got.append(int(message["sequence"]))
                elif message["type"] == "error":
                    raise AssertionError(message)


@pytest.mark.slow
async def test_websocket_clients_resume_on_another_gateway_without_gaps(
    cluster_settings: Settings, tmp_path: Path
) -> None:
    settings = cluster_settings
    run = uuid.uuid4().hex
    subject = f"scale/{run}"
    async with replicas("events", settings, tmp_path, 2) as events:
        env = {"EVENTS_ADDRESS": addresses(events)}
        async with replicas("gateway", settings, tmp_path, 2, env=env) as gateways:
            doomed, survivor = gateways
            async with aio_channel(addresses(events), settings) as channel:
                stub = events_pb2_grpc.EventServiceStub(channel)
                got: list[int] = []
                first = asyncio.create_task(receive(ws_url(doomed), subject, "beginning", got))
                published: list[int] = []
                for i in range(EVENTS):
                    event = events_pb2.Event(id=f"ws-{run}-{i}", type="test.ws", subject=subject)
                    published.append(await publish_until_acknowledged(stub, event))
                    if i == EVENTS // 3:
                        deadline = asyncio.get_running_loop().time() + 60
                        while len(got) < 5:  # the first gateway is streaming to the client
                            assert asyncio.get_running_loop().time() < deadline, got
                            await asyncio.sleep(0.05)
                        doomed.kill()
                        await first
                        resumed = asyncio.create_task(
                            receive(ws_url(survivor), subject, got[-1], got)
                        )
                deadline = asyncio.get_running_loop().time() + 60
                while len(got) < EVENTS:
                    assert asyncio.get_running_loop().time() < deadline, (len(got), got[-3:])
                    await asyncio.sleep(0.05)
                resumed.cancel()
    assert got == published  # every event, in order, none twice, across the two gateways


def ws_url(gateway: Replica) -> str:
    return f"ws://{gateway.address}/ws"
