"""Clients of the mesh given several replicas: calls are spread over them (round_robin), and a
read caught on a replica that dies is answered by another (gRPC's retry policy), so the caller
never sees the death."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from scale_helpers import Replica, addresses, replicas

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.grpc_client import aio_channel, channel_target


def served(replica: Replica, rpc: str) -> int:
    """How many calls of `rpc` the replica answered (its DEBUG log has one line per call)."""
    return sum(1 for line in replica.log_text().splitlines() if "rpc done" in line and rpc in line)


async def wait_until(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def read_from_both(
    stub: events_pb2_grpc.EventServiceStub, group: list[Replica], subject: str
) -> tuple[events_pb2.Event, events_pb2.GetEventRequest]:
    """An event published, then read until both replicas have answered reads (spread): the
    event and the read request."""
    stored = (
        await stub.PublishEvent(
            events_pb2.PublishEventRequest(
                event=events_pb2.Event(type="test.scale", subject=subject)
            ),
            timeout=30,
        )
    ).event
    request = events_pb2.GetEventRequest(name=f"events/{stored.sequence}")
    for _ in range(20):
        await stub.GetEvent(request, timeout=30)
    await wait_until(
        lambda: all(served(replica, "GetEvent") for replica in group),
        f"one replica served every read: {[served(r, 'GetEvent') for r in group]}",
    )
    return stored, request


async def test_reads_are_spread_and_survive_a_replica_killed_under_them(
    infra: Any, tmp_path: Path
) -> None:
    settings = infra.settings()
    async with replicas("events", settings, tmp_path, 2, env={"LOG_LEVEL": "DEBUG"}) as group:
        doomed = group[0]
        async with aio_channel(addresses(group), settings) as channel:
            stub = events_pb2_grpc.EventServiceStub(channel)
            stored, request = await read_from_both(stub, group, "rr/1")

            # Reads sent while one replica is frozen: its share waits there, in flight …
            doomed.freeze()
            calls = [asyncio.ensure_future(stub.GetEvent(request, timeout=90)) for _ in range(20)]
            await wait_until(
                lambda: sum(c.done() for c in calls) >= 5, "the live replica answered nothing"
            )
            in_flight = [c for c in calls if not c.done()]
            assert in_flight, "no read was sent to the frozen replica"
            # … until it is killed: gRPC sends each of them again, to the replica left.
            doomed.kill()
            answers = await asyncio.gather(*calls)
            assert all(a.event == stored for a in answers)
            # New reads go to the survivor alone, and all succeed.
            for _ in range(10):
                assert (await stub.GetEvent(request, timeout=30)).event == stored


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:1,127.0.0.2:2", "ipv4:127.0.0.1:1,127.0.0.2:2"),
        ("localhost:1, 127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
        ("dns:///rag.amelia.svc:50053", "dns:///rag.amelia.svc:50053"),
        ("127.0.0.1:50051", "127.0.0.1:50051"),
    ],
)
def test_an_address_list_becomes_one_balanced_target(address: str, target: str) -> None:
    assert channel_target(address) == target


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1:1,no-such-host.invalid:2", "cannot resolve"),
        ("127.0.0.1:1,nowhere", "is not host:port"),
    ],
)
def test_a_bad_address_list_is_refused_clearly(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        channel_target(address)
