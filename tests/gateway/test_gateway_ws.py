"""The /ws protocol against a real gateway (uvicorn) and a real events service.

Ordering, resume without gap or duplicate, one shared upstream for many sockets, upstream
cancellation when a socket goes away, refusals (token, connection limit), bad messages, the
heartbeat and the going-away close at shutdown.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from gateway_helpers import (
    Client,
    Publisher,
    RunningGateway,
    closed_address,
    new_subject,
    start_gateway,
    wait_for,
)

from amelia_common.settings import Settings
from amelia_events.server import EventsService
from amelia_gateway.ws import MAX_SUBSCRIPTIONS


def readers_for(events_service: EventsService, subject: str) -> list[Any]:
    """The events service's open StreamEvents readers whose filter names `subject`."""
    assert events_service.servicer is not None
    token = subject.replace("/", ".")
    return [r for r in events_service.servicer.readers if any(token in f for f in r.filters)]


@pytest.fixture
async def custom_gateway(
    gateway_settings: Settings,
) -> AsyncIterator[Any]:
    """Start gateways with setting overrides; all stopped at the end."""
    started: list[RunningGateway] = []

    async def start(**overrides: Any) -> RunningGateway:
        values = {**gateway_settings.model_dump(), **overrides}
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        running = await start_gateway(settings)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


async def test_run_events_arrive_in_order_and_resume_has_no_gap_or_duplicate(
    gateway: RunningGateway, publisher: Publisher
) -> None:
    subject = new_subject()
    total = 40
    client = await Client.connect(gateway.ws_url)
    await client.subscribe("run", filter={"subject": subject})

    published: list[int] = []
    first_half = asyncio.Event()

    async def publish_all() -> None:
        for i in range(total):
            published.append(await publisher.publish(subject, data={"i": i}))
            if i == total // 2:
                first_half.set()
            await asyncio.sleep(0.005)

    producer = asyncio.create_task(publish_all())
    received = await client.events(10)
    await client.close()  # drops midway while events keep coming
    await first_half.wait()
    last = received[-1]["sequence"]

    resumed = await Client.connect(gateway.ws_url)
    await resumed.subscribe("run", filter={"subject": subject}, since=last)
    await producer
    received += await resumed.events(total - 10)
    await resumed.close()

    sequences = [m["sequence"] for m in received]
    assert sequences == published  # every event, in order, none twice
    assert [m["event"]["data"]["i"] for m in received] == list(range(total))
    assert all(m["event"]["sequence"] == str(m["sequence"]) for m in received)


async def test_catch_up_hands_over_to_the_shared_live_stream(
    gateway: RunningGateway, publisher: Publisher, events_service: EventsService
) -> None:
    subject = new_subject()
    history = [await publisher.publish(subject, data={"i": i}) for i in range(5)]
    live = await Client.connect(gateway.ws_url)
    await live.subscribe("live", filter={"subject": subject})
    handovers = gateway.gateway.hub.handovers
    late = await Client.connect(gateway.ws_url)
    await late.subscribe("replay", filter={"subject": subject}, since="beginning")
    replayed = await late.events(5)
    assert [m["sequence"] for m in replayed] == history
    # (It hands over once its replay has caught up, whether a live event came or not.)
    more = [await publisher.publish(subject, data={"i": i}) for i in range(5, 10)]
    assert [m["sequence"] for m in await late.events(5)] == more
    assert [m["sequence"] for m in await live.events(5)] == more
    # The replaying subscriber moved onto the live topic: one upstream stream for both again.
    await wait_for(lambda: gateway.gateway.hub.handovers == handovers + 1)
    await wait_for(lambda: len(readers_for(events_service, subject)) == 1)
    await live.close()
    await late.close()


async def test_since_time_and_sequence(gateway: RunningGateway, publisher: Publisher) -> None:
    subject = new_subject()
    first = await publisher.publish(subject, data={"i": 0})
    second = await publisher.publish(subject, data={"i": 1})
    client = await Client.connect(gateway.ws_url)
    await client.subscribe("a", filter={"subject": subject}, since=first)
    assert [m["sequence"] for m in await client.events(1)] == [second]
    await client.subscribe("b", filter={"subject": subject}, since="2000-01-01T00:00:00Z")
    assert [m["sequence"] for m in await client.events(2)] == [first, second]
    await client.close()


async def test_two_hundred_sockets_share_one_upstream_stream(
    custom_gateway: Any, publisher: Publisher, events_service: EventsService
) -> None:
    running: RunningGateway = await custom_gateway(WS_MAX_CONNECTIONS=250)
    subject = new_subject()
    clients: list[Client] = []
    for batch in range(4):
        clients += await asyncio.gather(*(Client.connect(running.ws_url) for _ in range(50)))
        del batch
    await asyncio.gather(*(c.subscribe("all", filter={"subject": subject}) for c in clients))
    hub = running.gateway.hub
    assert hub.stats()["topics"] == 1
    assert hub.calls_active == 1
    await wait_for(lambda: len(readers_for(events_service, subject)) == 1)

    serialized = hub.serialized
    published = [await publisher.publish(subject, data={"i": i}) for i in range(20)]
    results = await asyncio.gather(*(c.events(20, timeout=60) for c in clients))
    for received in results:
        assert [m["sequence"] for m in received] == published
    # Each event was turned into JSON once, not once per socket.
    assert hub.serialized - serialized == 20
    assert len(readers_for(events_service, subject)) == 1
    assert hub.stats()["upstreamStreamsOpened"] == 1

    await asyncio.gather(*(c.close() for c in clients))
    await wait_for(lambda: hub.calls_active == 0)
    await wait_for(lambda: not readers_for(events_service, subject))


async def test_closing_a_socket_cancels_its_upstream_stream(
    gateway: RunningGateway, events_service: EventsService
) -> None:
    subject = new_subject()
    client = await Client.connect(gateway.ws_url)
    await client.subscribe("s", filter={"subject": subject})
    await wait_for(lambda: len(readers_for(events_service, subject)) == 1)
    reader = readers_for(events_service, subject)[0]
    await wait_for(lambda: reader.consumer_name is not None)
    consumer = reader.consumer_name
    assert events_service.event_log is not None
    js = events_service.event_log.js
    stream = gateway.settings.EVENTS_STREAM
    assert (await js.consumer_info(stream, consumer)).name == consumer

    await client.close()
    await wait_for(lambda: not readers_for(events_service, subject))
    # The JetStream consumer behind the stream is gone too.
    with pytest.raises(Exception, match=r"(?i)not found"):
        await js.consumer_info(stream, consumer)
    assert gateway.gateway.hub.calls_active == 0


async def test_unsubscribe_cancels_the_upstream_and_other_subscriptions_continue(
    gateway: RunningGateway, publisher: Publisher, events_service: EventsService
) -> None:
    one, two = new_subject(), new_subject()
    client = await Client.connect(gateway.ws_url)
    await client.subscribe("one", filter={"subject": one})
    await client.subscribe(2, filter={"subject": two, "types": ["app.*"]})
    await wait_for(lambda: len(readers_for(events_service, one)) == 1)
    await client.send({"type": "unsubscribe", "id": "one"})
    assert (await client.recv_type("unsubscribed"))["subscription"] == "one"
    await wait_for(lambda: not readers_for(events_service, one))
    await publisher.publish(one)
    sequence = await publisher.publish(two, "app.node.started")
    (event,) = await client.events(1)
    assert event["subscription"] == 2 and event["sequence"] == sequence
    assert event["event"]["type"] == "app.node.started"
    await client.close()


async def test_bad_messages_get_errors_and_the_socket_stays_usable(
    gateway: RunningGateway, publisher: Publisher
) -> None:
    client = await Client.connect(gateway.ws_url)
    bad: list[Any] = [
        "not json",
        "[1, 2]",
        {"type": "dance"},
        {"type": "subscribe"},
        {"type": "subscribe", "id": "x", "since": "yesterday"},
        {"type": "subscribe", "id": "x", "since": -1},
        {"type": "subscribe", "id": "x", "filter": {"types": "run.*", "colour": "red"}},
        {"type": "subscribe", "id": "x", "filter": {"subject": 5}},
        {"type": "subscribe", "id": "x", "run": "nope"},
        # What the services refuse, refused before `subscribed` (one error, nothing after).
        {"type": "subscribe", "id": "x", "run": "runs/nope"},
        {"type": "subscribe", "id": "x", "filter": {"types": ["a..b"]}},
        {"type": "subscribe", "id": "x", "filter": {"subject": "runs/**"}},
        {
            "type": "subscribe",
            "id": "x",
            "run": "runs/4f1c2a3b-0000-4000-8000-00000000abcd",
            "since": "now",
        },
        {"type": "unsubscribe", "id": "never"},
    ]
    for message in bad:
        await client.ws.send(message if isinstance(message, str) else json.dumps(message))
        reply = await client.recv_type("error")
        assert reply["error"]["code"] == 3, reply
        assert reply["error"]["message"]
        assert reply["final"] is True
    await client.ws.send(b"\x00binary")
    assert (await client.recv_type("error"))["error"]["code"] == 3

    subject = new_subject()
    await client.subscribe("ok", filter={"subject": subject})
    await client.send({"type": "subscribe", "id": "ok", "filter": {"subject": subject}})
    reply = await client.recv_type("error")
    assert "subscribe refused" in reply["error"]["message"], reply
    assert "already exists" in reply["error"]["message"], reply
    # Not final: the subscription "ok" goes on, a client must not drop it.
    assert reply["subscription"] == "ok" and reply["final"] is False, reply
    # The 101st subscription of a socket: RESOURCE_EXHAUSTED, and the socket goes on.
    for i in range(1, MAX_SUBSCRIPTIONS):
        await client.subscribe(i, filter={"subject": subject})
    await client.send({"type": "subscribe", "id": "one-too-many", "filter": {"subject": subject}})
    reply = await client.recv_type("error")
    assert reply["subscription"] == "one-too-many" and reply["error"]["code"] == 8, reply
    assert reply["final"] is True  # no subscription of that id runs
    assert "at most 100 subscriptions" in reply["error"]["message"]
    for i in range(1, MAX_SUBSCRIPTIONS):
        await client.send({"type": "unsubscribe", "id": i})
        await client.recv_type("unsubscribed")

    await client.send({"type": "ping"})
    assert (await client.recv_type("pong"))["type"] == "pong"
    sequence = await publisher.publish(subject)
    assert [m["sequence"] for m in await client.events(1)] == [sequence]
    await client.close()


async def test_max_connections_is_enforced_with_a_clear_refusal(custom_gateway: Any) -> None:
    running = await custom_gateway(WS_MAX_CONNECTIONS=2)
    first = await Client.connect(running.ws_url)
    second = await Client.connect(running.ws_url)
    ws = await websockets.connect(running.ws_url)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013
    assert "too many connections" in closed.value.rcvd.reason
    await first.close()
    await wait_for(lambda: len(running.gateway.connections) < 2)
    third = await Client.connect(running.ws_url)  # room again
    await second.close()
    await third.close()


async def test_websocket_token_by_header_or_subprotocol(custom_gateway: Any) -> None:
    running = await custom_gateway(AMELIA_API_TOKEN="s3cret")
    for kwargs in ({}, {"additional_headers": {"Authorization": "Bearer wrong"}}):
        ws = await websockets.connect(running.ws_url, **kwargs)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert "unauthorized" in closed.value.rcvd.reason

    by_header = await Client.connect(
        running.ws_url, additional_headers={"Authorization": "Bearer s3cret"}
    )
    by_key = await Client.connect(running.ws_url, additional_headers={"X-API-Key": "s3cret"})
    # Browsers: the token as a subprotocol; the gateway answers with amelia.v1 when offered.
    browser = await Client.connect(running.ws_url, subprotocols=["amelia.v1", "bearer.s3cret"])
    assert browser.ws.subprotocol == "amelia.v1"
    bare = await Client.connect(running.ws_url, subprotocols=["bearer.s3cret"])
    assert bare.ws.subprotocol == "bearer.s3cret"
    for client in (by_header, by_key, browser, bare):
        await client.close()


async def test_heartbeat_pings_and_closes_silent_clients(custom_gateway: Any) -> None:
    running = await custom_gateway(WS_HEARTBEAT_INTERVAL=0.2)
    talker = await Client.connect(running.ws_url)
    assert talker.welcome["heartbeatInterval"] == 0.2
    silent = await websockets.connect(running.ws_url)
    for _ in range(6):  # 1.2 s: past three intervals, the talker answers every ping
        message = await talker.recv()
        assert message["type"] == "ping"
        await talker.send({"type": "pong"})
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(silent.recv(), timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert talker.ws.state is websockets.State.OPEN
    await talker.close()


async def test_shutdown_tells_sockets_the_server_is_going_away(
    custom_gateway: Any, publisher: Publisher
) -> None:
    running = await custom_gateway()
    client = await Client.connect(running.ws_url)
    await client.subscribe("s", filter={"subject": new_subject()})
    await running.stop()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(client.ws.recv(), timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert "shutting down" in closed.value.rcvd.reason
    assert running.gateway.hub.calls_active == 0


async def test_unavailable_events_service_is_reported_on_the_subscription(
    custom_gateway: Any,
) -> None:
    running = await custom_gateway(EVENTS_ADDRESS=closed_address())
    client = await Client.connect(running.ws_url)
    await client.subscribe("s", filter={"subject": new_subject()})
    reply = await client.recv_type("error")
    assert reply["subscription"] == "s"
    assert reply["error"]["code"] == 14  # UNAVAILABLE
    assert "events service" in reply["error"]["message"]
    assert reply["final"] is False  # the gateway keeps retrying
    await client.close()


async def test_a_run_stream_that_fails_for_good_says_what_failed_and_where_to_resume(
    custom_gateway: Any, events_address: str
) -> None:
    """AGENTS_ADDRESS naming another service (here the events service): StreamRun is
    UNIMPLEMENTED there, a final failure. The client reads which service broke the stream, that
    it ended, and the `since` to resume from; not gRPC's bare "Method not found!"."""
    running = await custom_gateway(AGENTS_ADDRESS=events_address)
    client = await Client.connect(running.ws_url)
    for sub_id, since, resume in (("r0", "beginning", "subscribe again"), ("r5", 5, '"since": 5')):
        await client.subscribe(sub_id, run="runs/4f1c2a3b-0000-4000-8000-00000000abcd", since=since)
        reply = await client.recv_type("error")
        assert reply["subscription"] == sub_id and reply["final"] is True
        assert reply["error"]["code"] == 12  # UNIMPLEMENTED
        message = reply["error"]["message"]
        assert message.startswith(
            "the stream of runs/4f1c2a3b-0000-4000-8000-00000000abcd failed and has ended"
        ), message
        assert f"the agents service at {events_address}" in message, message
        assert resume in message, message
    # The socket goes on: the same subscription id can be used again.
    await client.subscribe("r0", run="runs/4f1c2a3b-0000-4000-8000-00000000abcd")
    await client.close()


async def test_events_service_restart_is_bridged_without_gap_or_duplicate(
    infra: Any, events_address: str
) -> None:
    """The gateway's upstream goes away and comes back: subscribers miss nothing, a plain one and
    a batching one (whose events the window holds: they still come before the error, once)."""
    from amelia_common.embedded import free_port
    from amelia_events.server import build_service

    port = free_port()
    upstream_settings = infra.settings(EVENTS_GRPC_PORT=port)
    upstream = await build_service(upstream_settings)
    await upstream.start()
    gateway_settings = infra.settings(
        EVENTS_ADDRESS=f"127.0.0.1:{port}",
        AGENTS_ADDRESS=closed_address(),
        RAG_ADDRESS=closed_address(),
    )
    running = await start_gateway(gateway_settings)
    # Events are published through the other events service (same log), which stays up.
    publisher = Publisher.connect(events_address, infra.settings())
    try:
        subject = new_subject()
        client = await Client.connect(running.ws_url)
        await client.subscribe("s", filter={"subject": subject})
        batched = await Client.connect(running.ws_url)
        await batched.subscribe("b", filter={"subject": subject}, batch=True)
        await wait_for(lambda: upstream.servicer is not None and bool(upstream.servicer.readers))
        published = [await publisher.publish(subject, data={"i": i}) for i in range(3)]
        received = [m["sequence"] for m in await client.events(3)]
        in_batches = await _batched_sequences(batched, 3)

        await upstream.stop(grace=0.5)
        for subscriber in (client, batched):
            error = await subscriber.recv_type("error")
            assert error["error"]["code"] == 14 and error["final"] is False
        published += [await publisher.publish(subject, data={"i": i}) for i in range(3, 6)]

        upstream = await build_service(upstream_settings)
        await upstream.start()
        for subscriber in (client, batched):  # the notice that clears the error, before events
            assert (await subscriber.recv_type("status", timeout=60))["status"] == "back"
        published += [await publisher.publish(subject, data={"i": i}) for i in range(6, 9)]
        received += [m["sequence"] for m in await client.events(6, timeout=60)]
        in_batches += await _batched_sequences(batched, 6)
        assert received == published
        assert in_batches == published
        await client.close()
        await batched.close()
    finally:
        await publisher.close()
        await running.stop()
        await upstream.stop(grace=0.5)


async def _batched_sequences(client: Client, count: int, timeout: float = 60) -> list[int]:
    """The sequences of the next `count` events of a batching subscription (whole messages)."""
    out: list[int] = []
    while len(out) < count:
        message = await client.recv(timeout)
        if message["type"] == "ping":
            continue
        assert message["type"] == "events", message
        out += [int(item["sequence"]) for item in message["events"]]
    return out
