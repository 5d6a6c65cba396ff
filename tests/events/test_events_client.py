"""The shared client (`amelia_common.eventlog`): EventBus semantics on NATS, and publishing that
retries within a bounded buffer and time, then raises; counted, never silently dropped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from events_helpers import own_event_log

from amelia.v1 import events_pb2
from amelia_common.embedded import EmbeddedNats
from amelia_common.eventlog import (
    EventLog,
    EventLogUnavailableError,
    InvalidEventError,
    StartAt,
)
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings


@pytest.fixture
async def event_log(settings: Settings) -> AsyncIterator[EventLog]:
    async with own_event_log(settings, "client") as log:
        yield log


async def wait_for(condition: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_many_handlers_and_one_failing_never_stops_the_others(
    event_log: EventLog, resource: str
) -> None:
    got_async: list[str] = []
    got_sync: list[str] = []

    async def records(event: events_pb2.Event) -> None:
        got_async.append(event.type)

    def also_records(event: events_pb2.Event) -> None:
        got_sync.append(event.type)

    async def explodes(event: events_pb2.Event) -> None:
        raise RuntimeError("handler bug")

    await event_log.subscribe("agent.*", explodes, subject=resource)
    await event_log.subscribe("agent.*", records, subject=resource)
    await event_log.subscribe("agent.*", also_records, subject=resource)
    # Published right after subscribe returned: delivered (subscribe returns once live).
    for event_type in ("agent.started", "agent.progress", "document.indexed", "agent.completed"):
        await event_log.publish(event_type, resource)
    expected = ["agent.started", "agent.progress", "agent.completed"]
    await wait_for(lambda: len(got_async) == 3 and len(got_sync) == 3)
    assert got_async == expected and got_sync == expected
    assert event_log.stats.handler_errors >= 3

    event_log.unsubscribe("agent.*", records, subject=resource)
    await event_log.publish("agent.failed", resource)
    await wait_for(lambda: len(got_sync) == 4)
    assert got_async == expected, "an unsubscribed handler gets nothing more"

    event_log.unsubscribe("agent.*", explodes, subject=resource)
    event_log.unsubscribe("agent.*", also_records, subject=resource)
    with pytest.raises(InvalidEventError):
        await event_log.subscribe("Agent.*", records)


async def test_reader_history_then_live(event_log: EventLog, resource: str) -> None:
    stored = [await event_log.publish("run.token", resource, {"i": i}) for i in range(5)]
    history = event_log.read(subject=resource, start=StartAt.beginning(), follow=False)
    async with history as r, asyncio.timeout(30):
        assert [e.id async for e in r] == [e.id for e in stored]
    reader = event_log.read(["run.*"], resource, StartAt.after(stored[2].sequence))
    async with reader, asyncio.timeout(30):
        got = [await anext(reader), await anext(reader)]
        later = await event_log.publish("run.completed", resource)
        got.append(await anext(reader))
    assert [e.id for e in got] == [stored[3].id, stored[4].id, later.id]


async def test_publish_waits_within_buffer_and_time_then_raises(
    settings: Settings, private_nats: EmbeddedNats, resource: str
) -> None:
    isolated = settings.model_copy(
        update={
            "NATS_URL": private_nats.url,
            "EVENTS_PUBLISH_BUFFER": 3,
            "EVENTS_PUBLISH_TIMEOUT_SECONDS": 1.0,
        }
    )
    nc = await connect_nats(isolated, "test-buffer")
    log = EventLog(nc, isolated, source="tests.buffer")
    await log.ensure_stream()
    try:
        await asyncio.to_thread(private_nats.stop)
        results = await asyncio.gather(
            *(log.publish("test.tick", resource, event_id=f"down-{n}") for n in range(8)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, EventLogUnavailableError)]
        assert len(errors) == 8, results  # none reported success while NATS was down
        full = [e for e in errors if "EVENTS_PUBLISH_BUFFER=3" in str(e)]
        timed_out = [e for e in errors if "EVENTS_PUBLISH_TIMEOUT_SECONDS" in str(e)]
        maybe = [e for e in errors if "may or may not be stored" in str(e)]
        assert len(full) == 5 and len(timed_out) + len(maybe) == 3, [str(e) for e in errors]
        assert log.stats.refused == 8 and log.stats.waiting_peak == 3
        assert log.stats.retried > 0 and log.stats.waiting == 0

        # Within the time budget, a publish made while NATS is down waits, and is stored once
        # NATS is back.
        log.settings = isolated.model_copy(update={"EVENTS_PUBLISH_TIMEOUT_SECONDS": 20.0})
        pending = [
            asyncio.create_task(log.publish("test.tick", resource, event_id=f"wait-{n}"))
            for n in range(3)
        ]
        await asyncio.sleep(1.0)
        assert log.stats.waiting == 3
        await asyncio.to_thread(private_nats.start)
        async with asyncio.timeout(30):
            stored = await asyncio.gather(*pending)
        assert all(e.sequence > 0 for e in stored)
        history = log.read(subject=resource, start=StartAt.beginning(), follow=False)
        async with history as r, asyncio.timeout(30):
            in_log = [e.id async for e in r]
        assert log.stats.published == 3
        # Stored once each; refused ones that never reached NATS are not in the log.
        waited = [e.id for e in stored]
        assert sorted(i for i in in_log if i.startswith("wait-")) == sorted(waited)
        assert len(in_log) == len(set(in_log))
        never_sent = {str(e).split()[1] for e in full + timed_out}
        assert not never_sent & set(in_log)
    finally:
        with contextlib.suppress(Exception):  # nats-py may fail closing after a restart
            await nc.close()
