"""The event outbox (`amelia_common.eventlog.outbox`) raced and cut off: two processes' outboxes
delivering one table while changes keep committing, and NATS stopped and started in the middle.
The log ends with every committed event once, each thing's events in the order they were
committed, and none of a transaction rolled back."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js import api
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from amelia.v1 import events_pb2
from amelia_common.db import create_engine, session_factory, transaction
from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.eventlog import EventLog, decode_event, event_data, make_event
from amelia_common.eventlog.outbox import Outbox
from amelia_common.nats_client import connect_nats

THINGS = 5
CHANGES = 144


async def logged(event_log: EventLog, collection: str) -> list[tuple[str, int, str]]:
    """(subject, n, id) of every event of `collection` in the log, in log order."""
    js = event_log.js
    sub = await js.subscribe(
        f"amelia.events.{collection}.>",
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    out = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except TimeoutError:
                return out
            event = decode_event(msg.data, msg.metadata.sequence.stream)
            out.append((event.subject, int(event_data(event)["n"]), event.id))
    finally:
        await sub.unsubscribe()


async def test_two_outboxes_raced_through_a_nats_restart_deliver_each_event_once_in_order(
    infra: Any, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path / "nats", free_port())
    settings = infra.settings(NATS_URL=nats.start(), EVENTS_PUBLISH_TIMEOUT_SECONDS=1.0)
    table = f"outbox_test_{random.randrange(1 << 30)}"
    collection = f"outboxtest{random.randrange(1 << 30)}"
    engine = create_engine(settings)
    connections = [await connect_nats(settings, f"outbox-test-{i}") for i in range(2)]
    logs = [EventLog(nc, settings, source="test") for nc in connections]
    await logs[0].ensure_stream()
    sessions = session_factory(engine)
    outboxes = [Outbox(sessions, log, table, interval=0.2) for log in logs]
    try:
        async with transaction(sessions) as session:
            await session.execute(
                text(f"CREATE TABLE {table} (seq bigserial PRIMARY KEY, event bytea NOT NULL)")
            )
        for outbox in outboxes:
            outbox.start()
        committed: list[str] = []
        # Each thing's changes in the order they committed (recorded under the thing's lock,
        # held until the commit, as a document's changes are).
        order: dict[str, list[int]] = {}

        async def change(i: int) -> None:
            """Change `i` of thing i % THINGS, its event queued in the change's transaction;
            every seventh is rolled back after its event was queued."""
            subject = f"{collection}/{i % THINGS}"
            event = make_event("thing.changed", subject, {"n": i}, source="")
            try:
                async with transaction(sessions) as session:
                    await session.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": 7_000 + i % THINGS}
                    )
                    await outboxes[i % 2].add(session, event)
                    order.setdefault(subject, []).append(i)
                    if i % 7 == 3:
                        order[subject].remove(i)
                        raise LookupError("rolled back")
            except LookupError:
                return
            committed.append(event.id)
            await outboxes[i % 2].deliver()

        for wave in range(0, CHANGES, 12):
            await asyncio.gather(*(change(i) for i in range(wave, wave + 12)))
            if wave == 36:
                await asyncio.to_thread(nats.stop)
            if wave == 72:
                await asyncio.to_thread(nats.start)
        deadline = asyncio.get_running_loop().time() + 60
        while await outboxes[0].pending():
            assert asyncio.get_running_loop().time() < deadline, "events stayed in the outbox"
            await asyncio.sleep(0.2)
        events = await logged(logs[0], collection)
        ids = [event_id for _, _, event_id in events]
        assert sorted(ids) == sorted(committed)  # each committed event once, no rolled-back one
        assert len(ids) == len(set(ids))
        for subject, committed_order in order.items():
            assert [n for s, n, _ in events if s == subject] == committed_order, subject
    finally:
        for outbox in outboxes:
            await outbox.stop()
        async with transaction(sessions) as session:
            await session.execute(text(f"DROP TABLE IF EXISTS {table}"))
        for nc in connections:
            await nc.close()
        await engine.dispose()
        await asyncio.to_thread(nats.stop)


async def test_a_delivery_ends_while_others_keep_committing_and_delivering(
    infra: Any, tmp_path: Path
) -> None:
    """A caller's deliver() waits for one pass begun after it asked, not for every pass that
    the callers after it ask for: with ten writers committing and asking for deliveries without
    pause, it still returns (before they are stopped), its event in the log."""
    settings = infra.settings()
    table = f"outbox_test_{random.randrange(1 << 30)}"
    collection = f"outboxtest{random.randrange(1 << 30)}"
    engine = create_engine(settings)
    nc = await connect_nats(settings, "outbox-busy-test")
    event_log = EventLog(nc, settings, source="test")
    await event_log.ensure_stream()
    sessions = session_factory(engine)
    outbox = Outbox(sessions, event_log, table)
    stop = asyncio.Event()

    async def commit(n: int) -> str:
        event = make_event("thing.changed", f"{collection}/{n % THINGS}", {"n": n}, source="")
        async with transaction(sessions) as session:
            await outbox.add(session, event)
        return event.id

    deliveries: set[asyncio.Task[None]] = set()

    async def writer(w: int) -> None:
        """Commits, each followed by a delivery it does not wait for (as new calls arrive)."""
        n = 0
        while not stop.is_set():
            n += 1
            await commit(1000 * (w + 1) + n)
            delivery = asyncio.create_task(outbox.deliver())
            deliveries.add(delivery)
            delivery.add_done_callback(deliveries.discard)
            await asyncio.sleep(0.01)

    try:
        async with transaction(sessions) as session:
            await session.execute(
                text(f"CREATE TABLE {table} (seq bigserial PRIMARY KEY, event bytea NOT NULL)")
            )
        writers = [asyncio.create_task(writer(w)) for w in range(10)]
        await asyncio.sleep(0.5)  # (the writers have begun: not a timing assumption)
        mine = await commit(0)
        await asyncio.wait_for(outbox.deliver(), timeout=60)
        assert not any(w.done() for w in writers)  # they were still at it
        stop.set()
        await asyncio.gather(*writers, *deliveries)
        deadline = asyncio.get_running_loop().time() + 60
        while await outbox.pending():
            assert asyncio.get_running_loop().time() < deadline, "events stayed in the outbox"
            await outbox.deliver()
        ids = [event_id for _, _, event_id in await logged(event_log, collection)]
        assert ids.count(mine) == 1
    finally:
        stop.set()
        await outbox.stop()
        async with transaction(sessions) as session:
            await session.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await nc.close()
        await engine.dispose()


WINDOW = 1.0  # the test stream's dedup window (EVENTS_DEDUP_WINDOW_SECONDS), seconds


async def forgotten_by_jetstream(event_log: EventLog, collection: str) -> None:
    """Return once JetStream's dedup memory no longer holds the ids published before this call:
    a probe published now, and again until JetStream stores it as new (older ids go first)."""
    subject = f"amelia.events.{collection}probe.x.thing.probed"
    headers = {"Nats-Msg-Id": f"probe-{random.randrange(1 << 60)}"}
    await event_log.js.publish(subject, b"probe", headers=headers)
    while True:
        await asyncio.sleep(WINDOW / 4)
        if not (await event_log.js.publish(subject, b"probe", headers=headers)).duplicate:
            return


@dataclass
class OwnOutbox:
    """An outbox table on a nats-server of the test's own, whose stream forgets ids fast."""

    nats: EmbeddedNats
    event_log: EventLog
    sessions: async_sessionmaker[AsyncSession]
    outbox: Outbox
    table: str
    collection: str


@contextlib.asynccontextmanager
async def own_outbox(infra: Any, tmp_path: Path) -> AsyncIterator[OwnOutbox]:
    nats = EmbeddedNats(tmp_path / "nats", free_port())
    settings = infra.settings(
        NATS_URL=nats.start(),
        EVENTS_DEDUP_WINDOW_SECONDS=WINDOW,
        EVENTS_PUBLISH_TIMEOUT_SECONDS=1.0,
    )
    table = f"outbox_test_{random.randrange(1 << 30)}"
    engine = create_engine(settings)
    nc = await connect_nats(settings, "outbox-window-test")
    event_log = EventLog(nc, settings, source="test")
    await event_log.ensure_stream()
    sessions = session_factory(engine)
    outbox = Outbox(sessions, event_log, table)
    try:
        async with transaction(sessions) as session:
            await session.execute(
                text(f"CREATE TABLE {table} (seq bigserial PRIMARY KEY, event bytea NOT NULL)")
            )
        yield OwnOutbox(
            nats, event_log, sessions, outbox, table, f"outboxtest{random.randrange(1 << 30)}"
        )
    finally:
        await outbox.stop()
        async with transaction(sessions) as session:
            await session.execute(text(f"DROP TABLE IF EXISTS {table}"))
            await session.execute(text(f"DROP FUNCTION IF EXISTS {table}_lost()"))
        await nc.close()
        await engine.dispose()
        await asyncio.to_thread(nats.stop)


async def queue(own: OwnOutbox, n: int) -> events_pb2.Event:
    """Change n of the test's thing, its event committed into the outbox."""
    event = make_event("thing.changed", f"{own.collection}/0", {"n": n}, source="")
    async with transaction(own.sessions) as session:
        await own.outbox.add(session, event)
    return event


async def test_an_event_stored_before_its_row_was_lost_is_not_stored_again_past_the_window(
    infra: Any, tmp_path: Path
) -> None:
    """JetStream stored the event, then PostgreSQL refused the row's delete (gone at that
    moment); when the outbox comes back past the dedup window, JetStream no longer knows the
    id — the outbox finds the event in the log and does not store it twice."""
    async with own_outbox(infra, tmp_path) as own:
        table = own.table
        async with transaction(own.sessions) as session:
            await session.execute(
                text(
                    f"CREATE FUNCTION {table}_lost() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'PostgreSQL lost before the delete'; END $$"
                )
            )
            await session.execute(
                text(
                    f"CREATE TRIGGER {table}_lost BEFORE DELETE ON {table} "
                    f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_lost()"
                )
            )
        earlier, event = await queue(own, 0), await queue(own, 1)
        await own.outbox.deliver()
        logged_ids = [i for _, _, i in await logged(own.event_log, own.collection)]
        assert logged_ids == [earlier.id, event.id]
        assert await own.outbox.pending() == 2  # stored, and the rows' delete refused
        await forgotten_by_jetstream(own.event_log, own.collection)
        async with transaction(own.sessions) as session:
            await session.execute(text(f"DROP TRIGGER {table}_lost ON {table}"))
        later = await queue(own, 2)
        await own.outbox.deliver()
        assert await own.outbox.pending() == 0
        assert [(n, i) for _, n, i in await logged(own.event_log, own.collection)] == [
            (0, earlier.id),
            (1, event.id),
            (2, later.id),
        ]


async def test_an_event_queued_through_an_outage_longer_than_the_window_is_stored_once(
    infra: Any, tmp_path: Path
) -> None:
    """NATS away from before the event was queued until past the dedup window: the outbox
    looks for it in the log, does not find it, and stores it (once)."""
    async with own_outbox(infra, tmp_path) as own:
        await asyncio.to_thread(own.nats.stop)
        event = await queue(own, 0)
        await own.outbox.deliver()
        assert await own.outbox.pending() == 1
        await asyncio.sleep(WINDOW)  # the event is now older than half the window
        await asyncio.to_thread(own.nats.start)
        deadline = asyncio.get_running_loop().time() + 60
        while await own.outbox.pending():
            assert asyncio.get_running_loop().time() < deadline, "the event stayed in the outbox"
            await own.outbox.deliver()
            await asyncio.sleep(0.1)
        assert [i for _, _, i in await logged(own.event_log, own.collection)] == [event.id]
