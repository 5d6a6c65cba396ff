"""The events service frozen (SIGSTOP) under an open WebSocket subscription: once the HTTP/2
keepalive gives it up (~10 s), the subscriber is told which service is unavailable and that the
events follow once it is back (session 13's QA got gRPC's raw "Stream removed (ping timeout)");
thawed, the subscription carries on with the next event, no gap and no duplicate. With two
replicas, the channel stays READY through the other one while the frozen one's stream breaks:
gRPC's own words must still not reach the subscriber as the service's."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

from gateway_helpers import Client, Publisher, closed_address, start_gateway
from scale_helpers import Replica, addresses, replicas, until_answered

from amelia_gateway.hub import RESUMES

UNAVAILABLE = 14


async def test_a_frozen_events_service_is_named_and_the_subscription_resumes(
    infra: Any, tmp_path: Path
) -> None:
    settings = infra.settings()
    async with replicas("events", settings, tmp_path, 1) as [events]:
        gateway = await start_gateway(
            infra.settings(
                EVENTS_ADDRESS=events.address,
                AGENTS_ADDRESS=closed_address(),
                RAG_ADDRESS=closed_address(),
            )
        )
        publisher = Publisher.connect(events.address, settings)
        client = await Client.connect(gateway.ws_url)
        try:
            subject = f"qa/{uuid.uuid4().hex}"
            await client.subscribe("a", filter={"subject": subject})
            first = await publisher.publish(subject)
            assert [m["sequence"] for m in await client.events(1)] == [first]

            events.freeze()
            error = await client.recv_type("error", timeout=90)
            assert error["final"] is False and error["error"]["code"] == UNAVAILABLE, error
            message = error["error"]["message"]
            assert message.startswith(f"the events service at {events.address} is unavailable ("), (
                message
            )
            assert message.endswith(RESUMES), message

            os.killpg(events.proc.pid, signal.SIGCONT)
            second = await until_answered(lambda: publisher.publish(subject))
            assert (await client.recv_type("status", timeout=90))["status"] == "back"
            got = await client.events(1, timeout=90)
            assert [m["sequence"] for m in got] == [second]
        finally:
            os.killpg(events.proc.pid, signal.SIGCONT)
            await client.close()
            await publisher.close()
            await gateway.stop()


async def test_a_frozen_replica_under_the_stream_is_named_while_the_other_serves(
    infra: Any, tmp_path: Path
) -> None:
    settings = infra.settings()
    async with replicas("events", settings, tmp_path, 2) as group:
        address = addresses(group)
        gateway = await start_gateway(
            infra.settings(
                EVENTS_ADDRESS=address,
                AGENTS_ADDRESS=closed_address(),
                RAG_ADDRESS=closed_address(),
            )
        )
        publishers = [Publisher.connect(r.address, settings) for r in group]
        client = await Client.connect(gateway.ws_url)
        frozen: list[Replica] = []

        def freeze(index: int) -> None:
            group[index].freeze()
            frozen.append(group[index])

        def thaw(replica: Replica) -> None:
            os.killpg(replica.proc.pid, signal.SIGCONT)

        try:
            subject = f"qa/{uuid.uuid4().hex}"
            await client.subscribe("a", filter={"subject": subject})
            first = await publishers[0].publish(subject)
            assert [m["sequence"] for m in await client.events(1)] == [first]

            # Which replica carries the stream: freeze the first, publish through the second.
            freeze(0)
            second = await publishers[1].publish(subject)
            message = await client.recv(timeout=90)
            if message["type"] == "event":  # the stream is on the second: freeze it instead
                assert message["sequence"] == second
                thaw(frozen.pop())
                freeze(1)
                second = await until_answered(lambda: publishers[0].publish(subject))
                message = await client.recv(timeout=90)
            assert message["type"] == "error" and message["final"] is False, message
            assert message["error"]["code"] == UNAVAILABLE, message
            said = message["error"]["message"]
            # Which replica froze the channel does not say: one of them (QA s22 F12).
            assert said.startswith(
                f"a replica of the events service (one of {address}) is unavailable ("
            ), said
            assert said.endswith(RESUMES), said
            # The subscription carries on through the replica left, from where it was: the
            # client is told the stream is open again, then the event follows.
            assert (await client.recv_type("status", timeout=90))["status"] == "back"
            got = await client.events(1, timeout=90)
            assert [m["sequence"] for m in got] == [second]
        finally:
            for replica in frozen:
                thaw(replica)
            await client.close()
            for publisher in publishers:
                await publisher.close()
            await gateway.stop()
