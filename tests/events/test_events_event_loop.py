"""The events service runs on uvloop (cheaper loop wake-ups per StreamEvents message, see
docs/performance.md session 13) unless AMELIA_UVLOOP=0 asks for asyncio's own loop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from amelia_events.__main__ import run


def _loop_type() -> type:
    seen: list[type] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()))

    run(main())
    return seen[0]


def test_the_service_runs_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMELIA_UVLOOP", raising=False)
    assert _loop_type() is uvloop.Loop


def test_amelia_uvloop_0_keeps_asyncio_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMELIA_UVLOOP", "0")
    assert not issubclass(_loop_type(), uvloop.Loop)
