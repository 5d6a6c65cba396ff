"""Streams are created the same way by every replica, safely when they all start at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from nats.js import api

from amelia_agents.queue import ensure_queue
from amelia_common.eventlog.envelope import stream_config
from amelia_common.nats_client import connect_nats, ensure_stream, stream_config_differs
from amelia_common.settings import Settings


def _own(infra: Any) -> Settings:
    tag = uuid.uuid4().hex[:8].upper()
    return infra.settings(EVENTS_STREAM=f"EV_{tag}", RUNS_QUEUE_STREAM=f"RQ_{tag}")


def _events_config(settings: Settings) -> api.StreamConfig:
    """The event stream's configuration on subjects of its own (the session's real event
    stream holds `amelia.events.>`, and streams may not overlap)."""
    config = stream_config(settings)
    config.subjects = [f"streams-test.{settings.EVENTS_STREAM}.>"]
    return config


async def test_replicas_starting_together_all_get_the_stream(infra: Any) -> None:
    settings = _own(infra)
    clients = [await connect_nats(settings, f"replica-{i}") for i in range(6)]
    try:
        config = _events_config(settings)
        # Six replicas racing to create the same streams: none fails.
        await asyncio.gather(*(ensure_stream(nc.jetstream(), config) for nc in clients))
        await asyncio.gather(*(ensure_queue(nc.jetstream(), settings) for nc in clients))
        js = clients[0].jetstream()
        names = [n async for n in _stream_names(js)]
        assert names.count(settings.EVENTS_STREAM) == 1
        assert names.count(settings.RUNS_QUEUE_STREAM) == 1
    finally:
        for nc in clients:
            js = nc.jetstream()
            if nc is clients[0]:
                await js.delete_stream(settings.EVENTS_STREAM)
                await js.delete_stream(settings.RUNS_QUEUE_STREAM)
            await nc.close()


async def _stream_names(js: Any) -> Any:
    for info in await js.streams_info():
        yield info.config.name


async def test_a_stream_as_configured_is_left_alone_and_a_changed_one_updated(infra: Any) -> None:
    settings = _own(infra)
    nc = await connect_nats(settings, "streams-test")
    js = nc.jetstream()
    try:
        config = _events_config(settings)
        await ensure_stream(js, config)
        # What the server reports back reads as the same configuration: no update needed.
        assert not stream_config_differs((await js.stream_info(config.name or "")).config, config)
        changed = _events_config(settings)
        changed.max_bytes = (config.max_bytes or 1 << 30) // 2
        assert stream_config_differs((await js.stream_info(config.name or "")).config, changed)
        await ensure_stream(js, changed)
        assert (await js.stream_info(config.name or "")).config.max_bytes == changed.max_bytes
    finally:
        await js.delete_stream(settings.EVENTS_STREAM)
        await nc.close()


@pytest.mark.parametrize(
    ("existing", "wanted", "differs"),
    [
        (["a.>", "b.>"], ["b.>", "a.>"], False),
        (["a.>"], ["a.>", "b.>"], True),
    ],
)
def test_subjects_compare_as_sets(existing: list[str], wanted: list[str], differs: bool) -> None:
    assert (
        stream_config_differs(
            api.StreamConfig(name="S", subjects=existing, max_msgs=10),
            api.StreamConfig(name="S", subjects=wanted),
        )
        is differs
    )
