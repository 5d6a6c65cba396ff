"""The agents service's and standalone worker's event loop (`amelia_common.aio.run`): uvloop by
default, asyncio's own loop with AMELIA_UVLOOP=0 (to tell whether a problem is the loop's)."""

from __future__ import annotations

import asyncio

import pytest

from amelia_common import aio


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_services_run_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMELIA_UVLOOP", raising=False)
    assert aio.run(_loop_module()).startswith("uvloop")


@pytest.mark.parametrize("off", ["0", "false", "off", " NO "])
def test_amelia_uvloop_0_runs_asyncios_own_loop(monkeypatch: pytest.MonkeyPatch, off: str) -> None:
    monkeypatch.setenv("AMELIA_UVLOOP", off)
    assert aio.run(_loop_module()).startswith("asyncio")
