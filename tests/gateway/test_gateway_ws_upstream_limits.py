"""The gateway holds its share of the event log's readers, whatever its clients subscribe to.

QA F4: 20 sockets of 100 subscriptions (within the gateway's limits of 100 × 100) used up the
JetStream stream's consumers (`max_consumers`; nats-server 2.15 gives a stream 1000 by default),
and every other reader of the mesh was refused. Now a catch-up subscription replays on a reader
of its own only in its turn (GATEWAY_MAX_REPLAYS at once, WS_MAX_REPLAYS per socket; the others
wait, and get every event once when their turn comes), a socket has at most WS_MAX_FILTERS
distinct filters (GATEWAY_MAX_FILTERS in the gateway; one more is refused at subscribe), and a
RESOURCE_EXHAUSTED from the events service is said as what it is and tried again less often,
not as an outage.

The event log here is a stream of the test's own, on a nats-server of its own, that takes few
consumers (`max_consumers`), as tests/events/test_events_nats_limits.py arranges it: what the
old gateway opened went past it, and its refusals reached the clients. Counts are read from the
gateway (`/v1/status`, its hub) and from NATS (the stream's consumer count), waited for, never
slept on.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_helpers import (
    Client,
    Publisher,
    RunningGateway,
    closed_address,
    new_subject,
    start_gateway,
    wait_for,
)
from test_gateway_slow import _stuck_client
from test_gateway_ws_batches import publish_many

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.eventlog import stream_config
from amelia_common.grpc_client import aio_channel
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings
from amelia_gateway.hub import MAX_ROOM_BACKOFF, RESUMES, ROOM_AGAIN, ROOM_BACKOFF, room_backoff

PAYLOAD = "x" * 100_000  # ~100 KB an event: a client that does not read stalls its replays


@dataclass
class SmallLog:
    """An events service on a nats-server of the test's own whose stream takes `most`
    consumers; `gateway(...)` starts gateways in front of it (stopped at the end)."""

    settings: Settings
    address: str
    most: int
    nc: Any
    publisher: Publisher
    started: list[RunningGateway]

    async def consumers(self) -> int:
        """The stream's JetStream consumers now, as NATS counts them."""
        info = await self.nc.jetstream().stream_info(self.settings.EVENTS_STREAM)
        return int(info.state.consumer_count)

    async def consumers_become(self, wanted: Callable[[int], bool], timeout: float = 30) -> int:
        """Wait until the stream's consumer count is `wanted`; the count."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not wanted(count := await self.consumers()):
            if loop.time() > deadline:
                held = await self.nc.jetstream().consumers_info(self.settings.EVENTS_STREAM)
                raise AssertionError(
                    f"the stream has {count} consumers: "
                    + "; ".join(
                        f"{c.name} {c.config.filter_subjects or c.config.filter_subject} "
                        f"delivered {c.delivered.stream_seq}"
                        for c in held
                    )
                )
            await asyncio.sleep(0.05)
        return count

    async def gateway(self, **settings: Any) -> RunningGateway:
        """A gateway in front of the events service, with `settings` (its limits) set."""
        running = await start_gateway(
            self.settings.model_copy(
                update={
                    "EVENTS_ADDRESS": self.address,
                    "AGENTS_ADDRESS": closed_address(),
                    "RAG_ADDRESS": closed_address(),
                    **settings,
                }
            )
        )
        self.started.append(running)
        return running


@pytest.fixture
def most_consumers() -> int:
    return 12


@pytest.fixture
async def small_log(infra: Any, tmp_path: Path, most_consumers: int) -> AsyncIterator[SmallLog]:
    from amelia_events.server import build_service

    nats = EmbeddedNats(tmp_path, free_port())
    nats.start()
    settings: Settings = infra.settings(NATS_URL=nats.url, EVENTS_PUBLISH_TIMEOUT_SECONDS=5.0)
    nc = await connect_nats(settings, "test-gateway-limits")
    config = stream_config(settings)
    config.max_consumers = most_consumers
    await nc.jetstream().add_stream(config)
    events = await build_service(settings)
    await events.start()
    address = f"127.0.0.1:{events.bound_port}"
    publisher = Publisher.connect(address, settings)
    log = SmallLog(settings, address, most_consumers, nc, publisher, [])
    try:
        yield log
    finally:
        for running in log.started:
            await running.stop()
        await publisher.close()
        await nc.close()
        await events.stop(1.0)
        nats.stop()


async def status_of(running: RunningGateway) -> dict[str, Any]:
    """The gateway's counters, as `/v1/status` shows them."""
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        reply = await http.get("/v1/status")
    assert reply.status_code == 200, reply.text
    gateway: dict[str, Any] = reply.json()["gateway"]
    return gateway


async def send(ws: Any, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


# ------------------------------------------------------------------ catch-ups take turns


async def test_many_catch_ups_take_turns_and_each_gets_every_event_once(
    small_log: SmallLog,
) -> None:
    """30 catch-up subscriptions on one socket, from the beginning, then from sequences, with
    live events published meanwhile: at most WS_MAX_REPLAYS replay at once, each subscription
    gets every event after its `since` once, in order, and the stream (12 consumers; the old
    gateway opened a reader for each of the first twenty at once) never refuses one."""
    running = await small_log.gateway(WS_MAX_REPLAYS=2, GATEWAY_MAX_REPLAYS=4, WS_MAX_FILTERS=5)
    publisher = small_log.publisher
    subjects = [new_subject() for _ in range(3)]
    history = {s: await publish_many(publisher, s, 1000) for s in subjects}
    since: dict[str, Any] = {}
    subject_of: dict[str, str] = {}
    client = await Client.connect(running.ws_url)
    for i in range(30):
        sub = f"c{i}"
        subject_of[sub] = subjects[i % 3]
        # (A subscribe from a sequence is answered once its stream is open, or at once when
        # it waits for its turn.)
        since[sub] = "beginning" if i < 20 else history[subjects[i % 3]][i]
        await client.send(
            {
                "type": "subscribe",
                "id": sub,
                "filter": {"subject": subject_of[sub]},
                "since": since[sub],
            }
        )
    live = {s: await publish_many(publisher, s, 5, live=True) for s in subjects}

    def expected(sub: str) -> list[int]:
        everything = history[subject_of[sub]] + live[subject_of[sub]]
        after = 0 if since[sub] == "beginning" else since[sub]
        return [q for q in everything if q > after]

    kinds: dict[str, list[str]] = {sub: [] for sub in subject_of}
    got: dict[str, list[int]] = {sub: [] for sub in subject_of}
    statuses: list[dict[str, Any]] = []
    while any(len(got[sub]) < len(expected(sub)) for sub in got):
        message = await client.recv(timeout=60)
        if message["type"] == "ping":
            continue
        assert message["type"] in ("subscribed", "status", "event"), message
        sub = message["subscription"]
        kinds[sub].append(message["type"] if message["type"] != "status" else message["status"])
        if message["type"] == "event":
            got[sub].append(message["sequence"])
        elif message["type"] == "status":
            statuses.append(message)

    for sub, sequences in got.items():
        assert sequences == expected(sub), sub  # every event after its since, in order, once
        # `subscribed` first; a subscription that waited heard it, then that its turn came.
        assert kinds[sub][0] == "subscribed", kinds[sub]
        told = [k for k in kinds[sub] if k != "event"]
        assert told in (["subscribed"], ["subscribed", "queued", "started"]), kinds[sub]
        if "queued" in told:
            assert kinds[sub].index("started") < kinds[sub].index("event"), kinds[sub]
    for message in statuses:
        if message["status"] == "queued":
            assert message["message"].startswith(
                "waiting for its turn to replay: this socket already replays 2 catch-up "
                "subscriptions at once, its most (WS_MAX_REPLAYS), each a reader of the event "
                "log; "
            ), message
            assert message["message"].endswith(
                "Its replay starts as soon as one of them has caught up, from where it asked: "
                "no event is missed or sent twice"
            ), message

    # Each replay handed over to its subject's shared stream and gave its turn back.
    await wait_for(lambda: running.gateway.hub.stats()["replays"] == 0)
    status = await status_of(running)
    assert status["replaysPeak"] <= 2, status  # never more than WS_MAX_REPLAYS at once
    assert status["replaysWaiting"] == 0 and status["topics"] == 3, status
    assert status["replaysWaited"] == sum("queued" in k for k in kinds.values()), status
    assert (status["maxReplaysPerSocket"], status["maxReplays"]) == (2, 4), status
    await wait_for(lambda: running.gateway.hub.calls_active == 3)  # one per subject
    # NATS: the three subjects' readers, the replays' readers all gone.
    assert await small_log.consumers_become(lambda n: n == 3) == 3
    await client.close()


async def test_a_caught_up_catch_up_gives_its_turn_back_without_a_live_event(
    small_log: SmallLog,
) -> None:
    """A replay that reached the end of a quiet filter's events hands over to its topic and
    gives its turn back at once: with one turn per socket, the next catch-up (on another quiet
    subject) is not held up waiting for a live event that never comes."""
    running = await small_log.gateway(WS_MAX_REPLAYS=1)
    publisher = small_log.publisher
    quiet = [new_subject() for _ in range(3)]
    history = {s: await publish_many(publisher, s, 3) for s in quiet}
    client = await Client.connect(running.ws_url)
    for n, subject in enumerate(quiet):
        await client.send(
            {"type": "subscribe", "id": n, "filter": {"subject": subject}, "since": "beginning"}
        )
    got: dict[int, list[int]] = {n: [] for n in range(3)}
    while any(len(got[n]) < 3 for n in got):
        message = await client.recv(timeout=60)
        assert message["type"] in ("subscribed", "status", "event", "ping"), message
        if message["type"] == "event":
            got[message["subscription"]].append(message["sequence"])
    assert [got[n] for n in range(3)] == [history[s] for s in quiet]
    hub = running.gateway.hub
    await wait_for(lambda: hub.calls_active == 3)  # the three topics, no replay left
    await wait_for(lambda: hub.stats()["replays"] == 0 and hub.handovers == 3)
    assert hub.stats()["replaysPeak"] == 1
    assert await small_log.consumers_become(lambda n: n == 3) == 3
    # And the events that come later arrive once, on the shared streams.
    later = [await publisher.publish(s) for s in quiet]
    events = await client.events(3)
    assert sorted(m["sequence"] for m in events) == later
    await client.close()


async def test_a_socket_at_its_turns_holds_up_no_other_client(small_log: SmallLog) -> None:
    """A client that opens twenty catch-ups and does not read holds two turns (WS_MAX_REPLAYS),
    the rest of its catch-ups wait; another client's catch-up and live subscription work
    meanwhile. Once the gateway's turns are all taken (GATEWAY_MAX_REPLAYS), a catch-up waits,
    told why, and replays when a turn is given back; the socket at its own limit keeps waiting.
    NATS's count stays within what the gateway holds, within the stream's 12 (the old gateway
    opened a reader for each of the twenty at once, and the stream refused the other client)."""
    running = await small_log.gateway(WS_MAX_REPLAYS=2, GATEWAY_MAX_REPLAYS=4)
    hub = running.gateway.hub
    publisher = small_log.publisher
    big, small, live = new_subject(), new_subject(), new_subject()
    # ~30 MB: more than a socket's budget (16 MiB, of which a replay fills half) and the
    # kernel's buffers hold, so the replays of a client that does not read never end.
    await publish_many(publisher, big, 300, p=PAYLOAD)
    history = await publish_many(publisher, small, 5)

    def counts() -> tuple[int, int]:
        stats = hub.stats()
        return stats["replays"], stats["replaysWaiting"]

    stuck = await _stuck_client(running.port)
    stuck_too = await _stuck_client(running.port)
    reader = await Client.connect(running.ws_url)
    try:
        for n in range(20):
            await send(
                stuck,
                {"type": "subscribe", "id": n, "filter": {"subject": big}, "since": "beginning"},
            )
        await wait_for(lambda: counts() == (2, 18))
        # At most its two replays (behind the client) and the subject's topic hold a reader.
        await small_log.consumers_become(lambda n: n <= 3)

        await reader.subscribe("small", filter={"subject": small}, since="beginning")
        assert [m["sequence"] for m in await reader.events(5)] == history
        await reader.subscribe("live", filter={"subject": live})
        sequence = await publisher.publish(live)
        (event,) = await reader.events(1)
        assert (event["subscription"], event["sequence"]) == ("live", sequence)

        # A second client that does not read takes the gateway's two other turns.
        for n in range(3):
            await send(
                stuck_too,
                {"type": "subscribe", "id": n, "filter": {"subject": big}, "since": "beginning"},
            )
        await wait_for(lambda: counts() == (4, 19))
        await reader.send(
            {"type": "subscribe", "id": "again", "filter": {"subject": small}, "since": 0}
        )
        assert (await reader.recv_type("subscribed"))["subscription"] == "again"
        queued = await reader.recv_type("status")
        assert (queued["subscription"], queued["status"]) == ("again", "queued"), queued
        assert queued["message"] == (
            "waiting for its turn to replay: the gateway already replays 4 catch-up "
            "subscriptions at once, its most (GATEWAY_MAX_REPLAYS), each a reader of the event "
            "log; 19 wait before it. Its replay starts as soon as one of them has caught up, "
            "from where it asked: no event is missed or sent twice"
        )
        status = await status_of(running)
        assert (status["replays"], status["replaysWaiting"], status["replaysPeak"]) == (4, 20, 4)
        # Four replays and three topics at most: NATS holds no more than the gateway says.
        await small_log.consumers_become(lambda n: n <= 7)

        # The first stuck client goes away: its turns go to the first waiting catch-up whose
        # socket has a turn free — not the second stuck client's (it has its two): the reader's.
        stuck.transport.abort()
        started = await reader.recv_type("status", timeout=60)
        assert (started["subscription"], started["status"]) == ("again", "started"), started
        assert [m["sequence"] for m in await reader.events(5)] == history
        await wait_for(lambda: counts() == (2, 1))
    finally:
        stuck.transport.abort()
        stuck_too.transport.abort()
    await wait_for(lambda: counts() == (0, 0))
    await wait_for(lambda: hub.calls_active == 2)  # the reader's two subjects
    # NATS: the reader's two subjects' readers, every replay's gone.
    assert await small_log.consumers_become(lambda n: n == 2) == 2
    assert running.gateway.counters["wsClosedSlow"] == 0
    await reader.close()


# ------------------------------------------------------------------ distinct filters


async def test_one_distinct_filter_too_many_is_refused_at_subscribe(
    gateway_settings: Settings, publisher: Publisher
) -> None:
    running = await start_gateway(
        gateway_settings.model_copy(update={"WS_MAX_FILTERS": 3, "GATEWAY_MAX_FILTERS": 5})
    )
    try:
        one, two, three, four = (new_subject() for _ in range(4))
        client = await Client.connect(running.ws_url)
        assert (client.welcome["maxFilters"], client.welcome["maxReplays"]) == (3, 4)
        await client.subscribe("one", filter={"subject": one, "types": ["app.*", "run.*"]})
        await client.subscribe("two", filter={"subject": two})
        await client.subscribe("three", filter={"subject": three}, since="beginning")
        await client.send({"type": "subscribe", "id": "four", "filter": {"subject": four}})
        refused = await client.recv_type("error")
        assert refused == {
            "type": "error",
            "subscription": "four",
            "error": {
                "code": 8,
                "message": "subscribe refused: the subscriptions of this socket already have 3 "
                "distinct filters, its most (WS_MAX_FILTERS), each a reader of the event log; "
                "subscribe with a filter it has, unsubscribe one first, or use a wider filter (a "
                "subject pattern like runs/*, more types) and select on your side",
                "details": [],
            },
            "final": True,
        }, refused
        # The same filters again are no more readers (types are a set): taken, live or not.
        await client.subscribe("one again", filter={"subject": one, "types": ["run.*", "app.*"]})
        await client.subscribe("two again", filter={"subject": two}, since="beginning")
        # The socket goes on: its events come.
        sequence = await publisher.publish(one, "app.hello")
        got = await client.events(2)
        assert sorted(m["subscription"] for m in got) == ["one", "one again"]
        assert {m["sequence"] for m in got} == {sequence}
        # One filter fewer: a new one is taken.
        await client.send({"type": "unsubscribe", "id": "three"})
        assert (await client.recv_type("unsubscribed"))["subscription"] == "three"
        await client.subscribe("four", filter={"subject": four})

        # The gateway's own limit: five distinct filters in all, whoever subscribes.
        other = await Client.connect(running.ws_url)
        await other.subscribe("a", filter={"subject": new_subject()})
        await other.subscribe("b", filter={"subject": new_subject()})
        assert running.gateway.hub.stats()["topics"] == 5
        await other.send({"type": "subscribe", "id": "c", "filter": {"subject": new_subject()}})
        refused = await other.recv_type("error")
        assert refused["final"] is True and refused["error"]["code"] == 8, refused
        assert refused["error"]["message"].startswith(
            "subscribe refused: the gateway already follows 5 distinct filters, its most "
            "(GATEWAY_MAX_FILTERS), each a reader of the event log; "
        ), refused
        await other.subscribe("c", filter={"subject": one, "types": ["app.*", "run.*"]})

        status = await status_of(running)
        assert status["wsRefusedFilters"] == 2, status
        assert (status["maxFilters"], status["maxFiltersPerSocket"], status["topics"]) == (5, 3, 5)
        await client.close()
        await other.close()
    finally:
        await running.stop()


# ------------------------------------------------------------------ the event log is full


@pytest.mark.parametrize("most_consumers", [3])
async def test_an_event_log_without_room_is_said_as_such_and_retried_not_an_outage(
    small_log: SmallLog,
) -> None:
    """Three readers held by another client take the stream's three consumers: a live and a
    catch-up subscription are told the event log has no room (code 8, `final: false`: not
    "waiting for it … once it is back", the outage's words), and once readers close they
    hear it has room again and get their events, none missed."""
    running = await small_log.gateway()
    publisher = small_log.publisher
    channel = aio_channel(small_log.address, small_log.settings)
    stub = events_pb2_grpc.EventServiceStub(channel)
    held = []
    try:
        for _ in range(3):  # each on a filter of its own: a consumer each
            flt = events_pb2.EventFilter(subject=new_subject("tests"))
            call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt))
            await call.initial_metadata()
            held.append(call)
        assert await small_log.consumers_become(lambda n: n == 3) == 3

        subject = new_subject()
        client = await Client.connect(running.ws_url)
        await client.subscribe("live", filter={"subject": subject})
        notice = await client.recv_type("error", timeout=30)
        assert (notice["subscription"], notice["final"]) == ("live", False), notice
        assert notice["error"]["code"] == 8, notice
        message = notice["error"]["message"]
        assert message.startswith("too many open subscriptions on the event log"), message
        assert "maximum consumers limit reached" in message, message
        assert message.endswith(
            "; this is not an outage: the readers of the event log are all taken (by this or "
            "other clients). The gateway keeps the subscription and tries again every few "
            f"seconds, at most {MAX_ROOM_BACKOFF:g} s apart; its events follow from where they "
            "stopped, none missed or twice, once a reader is free"
        ), message
        assert RESUMES not in message and "is back" not in message

        held.pop().cancel()  # a reader closes
        back = await client.recv_type("status", timeout=60)
        assert back == {
            "type": "status",
            "subscription": "live",
            "status": "back",
            "message": ROOM_AGAIN,
        }, back
        assert ROOM_AGAIN.startswith("the event log has room for the stream again: ")
        sequence = await publisher.publish(subject)
        assert [m["sequence"] for m in await client.events(1)] == [sequence]

        # Full again (the live topic took the freed one): a catch-up is told the same, once.
        catch_up = new_subject()
        history = await publish_many(publisher, catch_up, 4)
        await client.subscribe("replay", filter={"subject": catch_up}, since="beginning")
        notice = await client.recv_type("error", timeout=30)
        assert (notice["subscription"], notice["final"]) == ("replay", False), notice
        assert (
            notice["error"]["code"] == 8 and "this is not an outage" in notice["error"]["message"]
        )
        for call in held:
            call.cancel()
        back = await client.recv_type("status", timeout=60)
        assert (back["subscription"], back["status"]) == ("replay", "back"), back
        assert [m["sequence"] for m in await client.events(4, timeout=60)] == history
        more = await publisher.publish(catch_up)
        assert [m["sequence"] for m in await client.events(1)] == [more]
        await client.close()
    finally:
        for call in held:
            call.cancel()
        await channel.close()


def test_room_backoff_grows_to_its_bound_and_is_jittered() -> None:
    """1 s, 2 s, 4 s … at most 30 s between attempts, each pause between half and all of it."""
    random.seed(7)
    for attempt in range(40):
        ceiling = min(ROOM_BACKOFF * 2**attempt, MAX_ROOM_BACKOFF)
        pauses = {room_backoff(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= p <= ceiling for p in pauses), (attempt, pauses)
        assert len(pauses) > 1  # not one moment for every stream refused together
    assert room_backoff(0) <= 1.0 and room_backoff(100) <= MAX_ROOM_BACKOFF


def test_the_defaults_keep_one_gateway_within_a_third_of_a_stream() -> None:
    """nats-server (2.15) gives a stream 1000 consumers unless it sets its own, and the events
    service sets none: at the defaults a gateway's topics and replays (each replay a reader of
    its own, and one more while it asks whether it has caught up) stay within a third of it."""
    defaults = Settings.model_construct()
    worst = defaults.GATEWAY_MAX_FILTERS + 2 * defaults.GATEWAY_MAX_REPLAYS
    assert worst <= 1000 // 3, worst
    assert defaults.WS_MAX_FILTERS + 2 * defaults.WS_MAX_REPLAYS <= 40
    assert stream_config(Settings(_env_file=None)).max_consumers in (None, -1, 0)  # type: ignore[call-arg]
