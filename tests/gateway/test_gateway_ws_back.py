"""The events service goes away and comes back while nothing is published: every kind of
subscription hears it is back (a `status` message), so a client can clear its outage notice
without waiting for the next event (QA: after `kill -9` of the events service, `/ws` said code 14
with `final: false` and then nothing)."""

from __future__ import annotations

from typing import Any

from gateway_helpers import Client, Publisher, closed_address, new_subject, start_gateway

from amelia_common.embedded import free_port
from amelia_events.server import build_service


async def test_a_socket_hears_the_events_service_is_back_before_any_new_event(
    infra: Any, events_address: str
) -> None:
    port = free_port()
    upstream_settings = infra.settings(EVENTS_GRPC_PORT=port)
    upstream = await build_service(upstream_settings)
    await upstream.start()
    running = await start_gateway(
        infra.settings(
            EVENTS_ADDRESS=f"127.0.0.1:{port}",
            AGENTS_ADDRESS=closed_address(),
            RAG_ADDRESS=closed_address(),
        )
    )
    publisher = Publisher.connect(events_address, infra.settings())
    try:
        subject = new_subject()
        first = await publisher.publish(subject, data={"i": 0})
        client = await Client.connect(running.ws_url)
        # live, live batching, and a catch-up one that replayed and moved onto the live stream
        await client.subscribe("live", filter={"subject": subject})
        await client.subscribe("batch", filter={"subject": subject}, batch=True)
        await client.subscribe("since", filter={"subject": subject}, since=first - 1)
        assert [m["sequence"] for m in await client.events(1)] == [first]

        await upstream.stop(grace=0.5)
        errors = {}
        while len(errors) < 3:
            message = await client.recv_type("error", timeout=60)
            errors[message["subscription"]] = message
        for message in errors.values():
            assert message["error"]["code"] == 14 and message["final"] is False, message
            assert "waiting for it" in message["error"]["message"], message

        upstream = await build_service(upstream_settings)
        await upstream.start()
        back = {}
        while len(back) < 3:  # nothing is published: the notice comes on its own
            message = await client.recv_type("status", timeout=60)
            back[message["subscription"]] = message
        assert set(back) == {"live", "batch", "since"}
        for message in back.values():
            assert message["status"] == "back", message
            assert message["message"].startswith("the events service is back"), message

        later = await publisher.publish(subject, data={"i": 1})
        got = set()
        while len(got) < 3:
            message = await client.recv(timeout=60)
            if message["type"] == "event":
                got.add((message["subscription"], message["sequence"]))
            elif message["type"] == "events":
                got |= {(message["subscription"], e["sequence"]) for e in message["events"]}
            else:
                assert message["type"] == "ping", message
        assert got == {("live", later), ("batch", later), ("since", later)}
        await client.close()
    finally:
        await publisher.close()
        await running.stop()
        await upstream.stop(grace=0.5)
