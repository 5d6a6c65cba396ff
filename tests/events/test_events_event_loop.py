"""The events service runs on uvloop (cheaper loop wake-ups per StreamEvents message, see
docs/performance.md session 13) unless AMELIA_UVLOOP=0 asks for asyncio's own loop, and with
gRPC's pollset_alternative experiment (session 14) unless GRPC_EXPERIMENTS says otherwise."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

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


_PROBE = """
import json, os, sys
import amelia_events.__main__ as service
imported = "grpc" in sys.modules

def stop():  # main's next step, once it chose the experiments
    raise SystemExit(0)

service.get_settings = stop
try:
    service.main()
except SystemExit:
    pass
print(json.dumps([os.environ.get("GRPC_EXPERIMENTS"), imported]))
"""


def _service_environment(environment: dict[str, str]) -> tuple[str | None, bool]:
    """GRPC_EXPERIMENTS as the service's `main` leaves it for gRPC, and whether grpc was
    imported before it (gRPC reads the variable once, when it is imported)."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=environment, capture_output=True, text=True, check=True
    ).stdout
    experiments, imported = json.loads(out)
    return experiments, imported


def test_the_service_chooses_pollset_alternative_before_grpc_is_imported() -> None:
    environment = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    assert _service_environment(environment) == ("pollset_alternative", False)


def test_grpc_experiments_set_even_empty_is_left_alone() -> None:
    assert _service_environment({**os.environ, "GRPC_EXPERIMENTS": ""}) == ("", False)
    chosen = {**os.environ, "GRPC_EXPERIMENTS": "-pollset_alternative"}
    assert _service_environment(chosen) == ("-pollset_alternative", False)
