"""The events service in process on port 0, a real gRPC channel to it, and helpers.

Each test shares the session's NATS; tests use their own subjects (a fresh resource id per test)
so they never see each other's events, whatever runs at the same time.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from events_helpers import Janitor, RunningEvents, start_events, stop_events

from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.settings import Settings


@pytest.fixture
async def events(settings: Settings) -> AsyncIterator[RunningEvents]:
    running = await start_events(settings)
    try:
        yield running
    finally:
        await stop_events(running)


@pytest.fixture
def resource() -> str:
    """A subject no other test uses: `tests/<random>`."""
    return f"tests/{uuid.uuid4().hex}"


@pytest.fixture
async def janitor() -> AsyncIterator[Janitor]:
    """Services and tasks a test starts through it are stopped at teardown, pass or fail."""
    j = Janitor()
    yield j
    await j.close()


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A NATS server of the test's own, for tests that stop or restart it."""
    server = EmbeddedNats(tmp_path, free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def on_private_nats(
    settings: Settings, private_nats: EmbeddedNats, janitor: Janitor
) -> RunningEvents:
    """The events service on the test's own NATS, waiting for it at most 1 s per call
    (EVENTS_PUBLISH_TIMEOUT_SECONDS), so outages are quick to show."""
    isolated = settings.model_copy(
        update={"NATS_URL": private_nats.url, "EVENTS_PUBLISH_TIMEOUT_SECONDS": 1.0}
    )
    return await janitor.start(isolated)
