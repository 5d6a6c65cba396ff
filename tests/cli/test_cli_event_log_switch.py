"""`amelia up` warns when a data directory's event log would silently change: one nats-server
keeps its store in `<data>/nats`, `amelia up --cluster N` in `<data>/nats-cluster`, neither
reads the other, so switching showed the earlier runs with no events and said nothing. The
stores here are written by real nats-servers (one embedded, then a 3-node cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.js import api

from amelia_cli.supervisor import event_log_switch_warning
from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.nats_client import connect_nats, ensure_stream
from amelia_common.nats_cluster import NatsCluster
from amelia_common.settings import Settings


async def make_events_stream(url: str, replicas: int) -> None:
    """The events stream made as the services make theirs (`ensure_stream`: a cluster's first
    R3 stream may be refused until the meta leader has heard from every peer)."""
    settings = Settings(NATS_URL=url)
    nc = await connect_nats(settings, "test-event-log-switch")
    try:
        js = nc.jetstream(timeout=20)
        config = api.StreamConfig(
            name=settings.EVENTS_STREAM, subjects=["switch.>"], num_replicas=replicas
        )
        await ensure_stream(js, config)
    finally:
        await nc.close()


def test_up_names_both_event_logs_when_a_data_dir_switches(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings(NATS_URL="", AMELIA_DATA_DIR=data)
    # A new data directory: nothing to warn about, either way.
    assert event_log_switch_warning(settings, 3) is None
    assert event_log_switch_warning(settings, 0) is None

    single = EmbeddedNats(data, free_port())
    asyncio.run(_with(single.start, make_events_stream, 1))
    single.stop()
    assert event_log_switch_warning(settings, 0) is None  # the same log as before
    warning = event_log_switch_warning(settings, 3)
    assert warning is not None
    assert str(data / "nats") in warning and str(data / "nats-cluster") in warning
    assert "without --cluster" in warning

    cluster = NatsCluster.on_free_ports(data / "nats-cluster", 3)
    try:
        asyncio.run(_with(cluster.start, make_events_stream, 3))
    finally:
        cluster.stop()
    # Both logs hold events now: each mode names the other's.
    back = event_log_switch_warning(settings, 0)
    assert back is not None and "with --cluster 3" in back
    assert event_log_switch_warning(settings, 3) is not None
    # An outside NATS (NATS_URL) is the same log whatever `up` is given.
    outside = Settings(NATS_URL="nats://127.0.0.1:4222", AMELIA_DATA_DIR=data)
    assert event_log_switch_warning(outside, 3) is None


async def _with(
    start: Callable[[], str], make: Callable[[str, int], Awaitable[None]], replicas: int
) -> None:
    """Start the server(s), then make the events stream on them."""
    url = await asyncio.to_thread(start)
    await make(url, replicas)
