"""`amelia up`'s supervisor tells a part that stopped from one that crashed.

A process that exits cleanly after someone's SIGTERM (the gateway re-raises it once drained; a
plain Python process dies by it; a handler may exit 0) has stopped: it is started again at once,
no crash is counted, so five such stops in a minute never make it FAILED (they did: each was a
crash, with backoff). SIGKILL or an error exit stays a crash (tests/e2e/test_supervision.py).
The real gateway is one of the parts, over the real `Supervisor`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from amelia_cli.mesh import SERVICES, ServiceSpec
from amelia_cli.supervisor import (
    CLEAN_STOPS_BURST,
    RestartPolicy,
    Supervisor,
    UnitState,
    state_file,
)
from amelia_common.embedded import free_port, process_alive
from amelia_common.settings import Settings

# A crash would wait a minute before its next start: a stop must not wait at all.
CRASH_BACKOFF = RestartPolicy(burst=5, window=60, first_delay=60)


@dataclass(frozen=True)
class StandIn(ServiceSpec):
    """A service played by a Python one-liner."""

    code: str = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code]


PLAIN = StandIn("plain", "", "", "PORT", code="import time; time.sleep(600)")
EXITS_ZERO = StandIn(
    "exits-zero",
    "",
    "",
    "PORT",
    code="import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "time.sleep(600)",
)
# Fails as a service does at start: a traceback on stderr ending with the error, exit code 1.
FAILS = StandIn(
    "fails",
    "",
    "",
    "PORT",
    code="import time; time.sleep(0.2)\n"
    "raise RuntimeError('the database was migrated by a newer Amelia')",
)
# Serves a moment, then exits 0 by itself: nobody asked it to stop.
QUITTER = StandIn("quitter", "", "", "PORT", code="import time; time.sleep(0.2)")
GATEWAY = next(spec for spec in SERVICES if spec.name == "gateway")


async def until(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[Callable[..., Supervisor]]:
    """Start a supervisor over the given services and watch them; stop it all afterwards."""
    started: list[tuple[Supervisor, asyncio.Event, asyncio.Task[None]]] = []

    async def start(*specs: ServiceSpec, **settings: object) -> Supervisor:
        supervisor = Supervisor(
            Settings(_env_file=None, AMELIA_DATA_DIR=tmp_path / "data", **settings),  # type: ignore[arg-type]
            services=specs,
            policy=CRASH_BACKOFF,
        )
        await supervisor.start_services()
        stop = asyncio.Event()
        started.append((supervisor, stop, asyncio.create_task(supervisor.watch(stop))))
        return supervisor

    yield start  # type: ignore[misc]
    for supervisor, stop, watching in started:
        stop.set()
        await watching
        await supervisor.stop(grace=10)


async def stop_and_see_it_back(supervisor: Supervisor, name: str) -> int:
    """SIGTERM the unit's process; wait until a new one runs; its pid."""
    unit = supervisor.services[name]
    old = unit.pid()
    assert old is not None
    os.kill(old, signal.SIGTERM)
    await until(lambda: unit.pid() not in (None, old), f"{name} started again")
    await until(lambda: unit.state == UnitState.RUNNING, f"{name} running")
    assert not process_alive(old)
    return unit.pid() or 0


async def test_five_sigterm_stops_in_a_minute_are_no_crash(
    watched: Callable[..., Supervisor],
) -> None:
    supervisor = await watched(PLAIN, EXITS_ZERO)  # type: ignore[misc]
    for _ in range(5):
        for name in ("plain", "exits-zero"):
            await stop_and_see_it_back(supervisor, name)
    units = json.loads(state_file(supervisor.settings.data_dir).read_text())["units"]
    assert units["plain"]["last_exit"] == "stopped by SIGTERM (a clean stop, not a crash)"
    assert units["exits-zero"]["last_exit"] == "exit code 0 (a clean stop, not a crash)"
    for name in ("plain", "exits-zero"):
        assert units[name]["state"] == "RUNNING", units[name]
        assert units[name]["crashes_in_window"] == 0 and units[name]["restarts"] == 5


async def test_a_sigkill_is_still_a_crash(watched: Callable[..., Supervisor]) -> None:
    supervisor = await watched(PLAIN)  # type: ignore[misc]
    unit = supervisor.services["plain"]
    os.kill(unit.pid() or 0, signal.SIGKILL)
    await until(lambda: unit.state == UnitState.RESTARTING, "the crash noticed")
    assert unit.last_exit == "killed by SIGKILL" and len(unit.crashes) == 1


async def test_a_crash_says_what_the_service_said_last(
    watched: Callable[..., Supervisor],
) -> None:
    """`amelia status` showed a service failing at each start as "exit code 1; 4 restarts"
    and a log path (QA s28): its last log line, the error, is said with the exit."""
    supervisor = await watched(PLAIN, FAILS)  # type: ignore[misc]
    unit = supervisor.services["fails"]
    await until(lambda: unit.crashes, "the crash noticed")
    assert unit.last_exit == (
        "exit code 1: RuntimeError: the database was migrated by a newer Amelia"
    ), unit.last_exit
    units = json.loads(state_file(supervisor.settings.data_dir).read_text())["units"]
    assert units["fails"]["last_exit"] == unit.last_exit


async def test_the_gateway_stopped_by_sigterm_is_back_at_once_without_a_crash(
    watched: Callable[..., Supervisor],
) -> None:
    """The QA repro: `kill -TERM <gateway pid>` under `amelia up`."""
    port = free_port()
    supervisor = await watched(GATEWAY, PORT=port)  # type: ignore[misc]
    url = f"http://127.0.0.1:{port}/"

    async def answers() -> bool:
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                return (await client.get(url)).status_code < 500
        except httpx.TransportError:
            return False

    async def until_answering(what: str) -> None:
        deadline = time.monotonic() + 60
        while not await answers():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.1)

    await until_answering("the gateway")
    await stop_and_see_it_back(supervisor, "gateway")
    await until_answering("the gateway again")
    gateway = supervisor.services["gateway"]
    assert gateway.last_exit == "stopped by SIGTERM (a clean stop, not a crash)"
    assert not gateway.crashes and gateway.restarts == 1


async def test_a_part_that_keeps_exiting_zero_by_itself_backs_off_like_a_crash(
    watched: Callable[..., Supervisor],
) -> None:
    """Restarted at once forever, a part that exits 0 on its own would spin: after burst × 4
    clean stops within the window it is crashing (backoff, then FAILED as any crash)."""
    supervisor = await watched(PLAIN, QUITTER)  # type: ignore[misc]
    unit = supervisor.services["quitter"]
    await until(lambda: unit.state == UnitState.RESTARTING, "the stops treated as a crash")
    assert len(unit.stops) == CRASH_BACKOFF.burst * CLEAN_STOPS_BURST
    assert unit.last_exit.startswith("exit code 0, ") and len(unit.crashes) == 1
    assert supervisor.services["plain"].state == UnitState.RUNNING
