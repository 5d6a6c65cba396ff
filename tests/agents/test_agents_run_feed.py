"""StreamRun's calls share one reader of the runs' events (`runfeed`) and still get each event of
their run after `after_sequence` once, in order: a call that joins with a few events to catch up
on reads them from the log first, one with many reads on its own, and one that falls behind the
feed goes on from the log after its last event."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from amelia.v1 import events_pb2
from amelia_agents import runfeed
from amelia_agents.models import RunRow, RunState
from amelia_agents.store import Store
from amelia_agents.streaming import RunStreamer
from amelia_common.db import create_engine, session_factory
from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.eventlog import EventLog, make_event
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings


@pytest.fixture
async def streamer(agents: Any, agents_settings: Settings) -> AsyncIterator[RunStreamer]:
    """A RunStreamer of its own (its own feed) on the session's NATS and database."""
    engine = create_engine(agents_settings)
    nc = await connect_nats(agents_settings, "test-run-feed")
    streamer = RunStreamer(
        agents_settings, Store(session_factory(engine)), EventLog(nc, agents_settings, "test")
    )
    yield streamer
    await streamer.close()
    await nc.close()
    await engine.dispose()


def running(run_id: uuid.UUID) -> RunRow:
    return RunRow(id=run_id, status=RunState.RUNNING.value, terminal_sequence=None)


async def publish(streamer: RunStreamer, run_id: uuid.UUID, *types: str) -> list[int]:
    """The run's events of `types`, published one after the other: their sequences."""
    sequences = []
    for event_type in types:
        event = make_event(event_type, f"runs/{run_id}", {"n": len(sequences)}, source="test")
        sequences.append((await streamer.event_log.publish_event(event)).sequence)
    return sequences


async def publish_elsewhere(streamer: RunStreamer, count: int) -> None:
    """Events of another run in between (the feed reads every run's)."""
    await publish(streamer, uuid.uuid4(), *["run.token"] * count)


async def fed(streamer: RunStreamer, sequence: int) -> None:
    """Once the feed has handed on every event up to `sequence` (a minute at most)."""
    for _ in range(6000):
        if streamer.feed.position >= sequence:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the feed stayed at {streamer.feed.position}, short of {sequence}")


async def rest(stream: AsyncIterator[list[events_pb2.Event]]) -> list[int]:
    """The sequences the stream gives until it ends."""
    return [event.sequence async for batch in stream for event in batch]


async def test_a_call_that_falls_behind_the_feed_goes_on_from_the_log_without_a_gap(
    streamer: RunStreamer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runfeed, "QUEUE_EVENTS", 3)
    run_id = uuid.uuid4()
    published = await publish(streamer, run_id, "workflow.started", "run.node.started")
    stream = aiter(streamer.stream(running(run_id), 0))
    first = await anext(stream)  # what the log held: caught up on, then the feed's
    assert [e.sequence for e in first] == published
    (follower,) = streamer.feed.followers[f"runs/{run_id}"]
    # The feed hands on more than the call may queue while nobody reads the stream.
    published += await publish(streamer, run_id, *["run.token"] * 8)
    await publish_elsewhere(streamer, 2)
    await fed(streamer, published[-1])
    assert follower.behind and streamer.feed.left_behind == 1
    published += await publish(streamer, run_id, "run.token", "run.completed")
    assert [*(e.sequence for e in first), *await rest(stream)] == published


async def test_calls_joining_a_run_catch_up_from_the_log_then_follow_it_to_its_end(
    streamer: RunStreamer,
) -> None:
    run_id = uuid.uuid4()
    many = runfeed.CATCH_UP_EVENTS + 4
    published = await publish(streamer, run_id, "workflow.started", *["run.token"] * many)
    await publish_elsewhere(streamer, 3)
    row = running(run_id)
    # From the start: more than the feed catches up on, so a reader of its own; from near the
    # end: the last few from the log, then the feed; with nothing to catch up on: the feed.
    middle, latest = published[-3], published[-1]
    streams = [aiter(streamer.stream(row, after)) for after in (0, middle, latest)]
    heads = [await anext(stream) for stream in streams[:2]]
    assert [e.sequence for e in heads[0]] == published[: len(heads[0])]
    assert [e.sequence for e in heads[1]] == published[-2:]
    published += await publish(streamer, run_id, "run.token")
    heads.append(await anext(streams[2]))
    assert [e.sequence for e in heads[2]] == published[-1:]
    # All three follow the feed: the first once its reader of its own has caught up.
    assert len(streamer.feed.followers[f"runs/{run_id}"]) == 3
    await publish_elsewhere(streamer, 2)
    # The end, and an event about the run after it (a landed branch), stored before the calls
    # read on: both given, then the stream ends.
    published += await publish(streamer, run_id, "run.token", "run.completed", "git.landed")
    await fed(streamer, published[-1])
    after = [
        [*(e.sequence for e in head), *await rest(stream)]
        for head, stream in zip(heads, streams, strict=True)
    ]
    assert after[0] == published
    assert after[1] == [s for s in published if s > middle]
    assert after[2] == [s for s in published if s > latest]
    assert streamer.feed.left_behind == 0


async def consumers(streamer: RunStreamer) -> int:
    """The event log stream's JetStream consumers now (every reader's)."""
    info = await streamer.event_log.js.stream_info(streamer.event_log.settings.EVENTS_STREAM)
    return int(info.state.consumer_count)


async def test_a_long_catch_up_gives_its_reader_back_and_follows_the_feed_to_the_end(
    streamer: RunStreamer,
) -> None:
    """A client joining a long run (a dashboard opened on it, a reconnect from 0) held a
    JetStream consumer of its own for the run's life: a thousand of them filled the stream's
    consumers and every reader of the mesh was refused. Its reader now ends once caught up."""
    run_id = uuid.uuid4()
    many = runfeed.CATCH_UP_EVENTS * 3
    published = await publish(streamer, run_id, "workflow.started", *["run.token"] * many)
    keeper = await streamer.feed.follow(uuid.uuid4())  # the feed's reader, open
    assert keeper is not None
    try:
        baseline = await consumers(streamer)
        stream = aiter(streamer.stream(running(run_id), 0))
        given = [e.sequence for e in await anext(stream)]
        while given[-1] < published[-1]:
            given += [e.sequence for e in await anext(stream)]
        assert given == published
        # Caught up: its reader's consumer goes (a minute at most), the call stays on the feed.
        for _ in range(600):
            if await consumers(streamer) == baseline:
                break
            await asyncio.sleep(0.1)
        assert await consumers(streamer) == baseline, "the catch-up's reader kept its consumer"
        assert len(streamer.feed.followers[f"runs/{run_id}"]) == 1
        published += await publish(streamer, run_id, "run.token", "run.completed")
        assert given + await rest(stream) == published
        assert streamer.feed.left_behind == 0
    finally:
        keeper.leave()


async def test_a_nats_restart_under_the_feed_loses_and_repeats_no_event(
    agents: Any, agents_settings: Settings, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    settings = agents_settings.model_copy(update={"NATS_URL": nats.start()})
    engine = create_engine(settings)
    nc = await connect_nats(settings, "test-run-feed-restart")
    streamer = RunStreamer(settings, Store(session_factory(engine)), EventLog(nc, settings, "test"))
    try:
        await streamer.event_log.ensure_stream()
        run_id = uuid.uuid4()
        published = await publish(streamer, run_id, "workflow.started", "run.token")
        stream = aiter(streamer.stream(running(run_id), 0))
        first = await anext(stream)
        assert f"runs/{run_id}" in streamer.feed.followers  # followed through the feed
        await asyncio.to_thread(nats.stop)
        await asyncio.to_thread(nats.start)
        # Published while the feed's reader reconnects, and after.
        published += await publish(streamer, run_id, "run.token", "run.token")
        await publish_elsewhere(streamer, 2)
        published += await publish(streamer, run_id, "run.token", "run.completed")
        assert [*(e.sequence for e in first), *await rest(stream)] == published
    finally:
        await streamer.close()
        await nc.close()
        await engine.dispose()
        await asyncio.to_thread(nats.stop)
