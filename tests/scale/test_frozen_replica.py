"""A replica frozen (SIGSTOP) and left frozen drops out of its clients' rotation: the HTTP/2
keepalive pings it no longer answers close its connection, round_robin skips it, and the reads
caught on it are retried on the other replica. The channel is `aio_channel`, the one the
gateway, the CLI and the services build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scale_helpers import addresses, replicas
from test_round_robin import read_from_both, served, wait_until

from amelia.v1 import events_pb2_grpc
from amelia_common.grpc_client import aio_channel

# Each read's deadline: well above the keepalive's ~10 s to see a frozen replica, well below
# the 40-60 s the old keepalive (30 s + 10 s) left a read waiting on it.
READ_DEADLINE = 30


async def test_reads_keep_answering_while_a_replica_stays_frozen(
    infra: Any, tmp_path: Path
) -> None:
    settings = infra.settings()
    async with replicas("events", settings, tmp_path, 2, env={"LOG_LEVEL": "DEBUG"}) as group:
        frozen, survivor = group
        try:
            async with aio_channel(addresses(group), settings) as channel:
                stub = events_pb2_grpc.EventServiceStub(channel)
                stored, request = await read_from_both(stub, group, "frozen/1")

                frozen.freeze()  # and left frozen: never killed while reads go on
                before = served(survivor, "GetEvent")
                for _ in range(20):
                    answer = await stub.GetEvent(request, timeout=READ_DEADLINE)
                    assert answer.event == stored
                # Every one of them was answered by the replica left.
                await wait_until(
                    lambda: served(survivor, "GetEvent") >= before + 20,
                    "the live replica did not answer the reads",
                )
        finally:
            frozen.kill()  # SIGKILL ends a stopped process too
