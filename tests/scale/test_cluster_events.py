"""Events published while the NATS node leading the events stream is SIGKILLed, through two
events replicas on a 3-node cluster (R3): every acknowledged event is in the log exactly once, a
replay of the stream has no gap and no duplicate, and a live subscriber that resumes with the
last sequence it saw (as every client of the mesh does) sees the same gap-free sequence."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import grpc
import pytest
from faults_support import last_sequence
from scale_support import addresses, all_replicas_current, replicas, stream_leader

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.grpc_client import aio_channel
from amelia_common.nats_cluster import NatsCluster
from amelia_common.settings import Settings

PUBLISHERS = 4
EVENTS_EACH = 30
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def publish_until_acknowledged(
    stub: events_pb2_grpc.EventServiceStub, event: events_pb2.Event
) -> int:
    """PublishEvent, sent again with the same id while the mesh answers UNAVAILABLE (a write is
    not retried by the channel: the id makes sending it again safe); its sequence."""
    deadline = asyncio.get_running_loop().time() + 120
    while True:
        try:
            reply = await stub.PublishEvent(events_pb2.PublishEventRequest(event=event), timeout=15)
            return int(reply.event.sequence)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRIED or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def publisher(
    stub: events_pb2_grpc.EventServiceStub, run: str, index: int, acked: dict[str, int]
) -> None:
    for i in range(EVENTS_EACH):
        event_id = f"{run}-{index}-{i}"
        event = events_pb2.Event(id=event_id, type="test.scale", subject=f"scale/{run}")
        acked[event_id] = await publish_until_acknowledged(stub, event)


async def follow(
    stub: events_pb2_grpc.EventServiceStub, after: int, seen: list[events_pb2.Event]
) -> None:
    """Every event after `after`, live, resuming after the last one seen when the stream breaks."""
    while True:
        last = seen[-1].sequence if seen else after
        call = stub.StreamEvents(
            events_pb2.StreamEventsRequest(after_sequence=last, max_events_per_message=100)
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for reply in call:
                seen.extend(reply.events or [reply.event])
        await asyncio.sleep(0.2)


async def replay(
    stub: events_pb2_grpc.EventServiceStub, after: int, until: int
) -> list[events_pb2.Event]:
    got: list[events_pb2.Event] = []
    call = stub.StreamEvents(
        events_pb2.StreamEventsRequest(after_sequence=after, max_events_per_message=100)
    )
    async with asyncio.timeout(60):
        async for reply in call:
            got.extend(reply.events or [reply.event])
            if got and got[-1].sequence >= until:
                break
    call.cancel()
    return got


@pytest.mark.slow
async def test_events_published_through_a_leader_change_are_stored_once_without_gaps(
    cluster_settings: Settings, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    settings = cluster_settings
    run = uuid.uuid4().hex[:8]
    async with replicas("events", settings, tmp_path, 2) as group:
        start = await last_sequence(settings)
        # The log is on all 3 nodes (EVENTS_STREAM_REPLICAS), its copies up to date.
        await all_replicas_current(settings, settings.EVENTS_STREAM)
        leader = nats_cluster.node(await stream_leader(settings, settings.EVENTS_STREAM))
        seen: list[events_pb2.Event] = []
        acked: dict[str, int] = {}
        try:
            async with aio_channel(addresses(group), settings) as channel:
                stub = events_pb2_grpc.EventServiceStub(channel)
                subscriber = asyncio.create_task(follow(stub, start, seen))
                publishers = asyncio.gather(
                    *(publisher(stub, run, i, acked) for i in range(PUBLISHERS))
                )
                deadline = asyncio.get_running_loop().time() + 60
                while len(acked) < PUBLISHERS * EVENTS_EACH // 4:
                    assert asyncio.get_running_loop().time() < deadline, len(acked)
                    await asyncio.sleep(0.02)
                await asyncio.to_thread(leader.kill)
                await publishers
                assert len(acked) == PUBLISHERS * EVENTS_EACH

                end = await last_sequence(settings)
                stored = await replay(stub, start, end)
                deadline = asyncio.get_running_loop().time() + 60
                while not seen or seen[-1].sequence < end:
                    assert asyncio.get_running_loop().time() < deadline, "subscriber stalled"
                    await asyncio.sleep(0.1)
                subscriber.cancel()
        finally:
            await asyncio.to_thread(leader.start)
            await all_replicas_current(settings, settings.EVENTS_STREAM)

    everything = list(range(start + 1, end + 1))
    assert [e.sequence for e in stored] == everything  # no gap, nothing twice
    assert [e.sequence for e in seen[: len(everything)]] == everything
    ours = [e for e in stored if e.subject == f"scale/{run}"]
    assert sorted(e.id for e in ours) == sorted(acked)  # every acknowledged event, once
    assert {e.id: e.sequence for e in ours} == acked  # at the sequence it was acknowledged with
