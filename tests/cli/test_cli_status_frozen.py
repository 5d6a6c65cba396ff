"""`amelia status` at 80 columns with two replicas of a service, one frozen (SIGSTOP): each
replica's address whole on its row (it was folded mid-port, `grpc://127.0.0.1:500` / `56`, and
the replicas could not be told apart), and the frozen one says in words that it did not answer
(it showed DEADLINE_EXCEEDED and an empty detail). Two real events processes on the session's
NATS and PostgreSQL; the other services are pointed at ports where nothing listens."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

from service_process import ServiceProcess
from typer.testing import CliRunner

from amelia_cli.health import grpc_health
from amelia_cli.main import app
from amelia_common.embedded import free_port
from amelia_common.settings import Settings, get_settings

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
EVENTS = "amelia.v1.EventService"


def replica(settings: Settings, log: Path) -> tuple[ServiceProcess, str]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.DATABASE_URL,
        "NATS_URL": settings.NATS_URL,
        "AMELIA_DATA_DIR": str(settings.AMELIA_DATA_DIR),
        "EVENTS_GRPC_PORT": str(port),
        "EVENTS_METRICS_PORT": "0",
        "ENVIRONMENT": "testing",
        "LOG_LEVEL": "WARNING",
        "GRPC_SHUTDOWN_GRACE_SECONDS": "1",
    }
    return ServiceProcess("amelia_events", env, log), f"127.0.0.1:{port}"


def status_at_80_columns(env: dict[str, str]) -> tuple[int, str]:
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["status"], env={**env, "COLUMNS": "80"})
    finally:
        get_settings.cache_clear()
    # Log lines of services the test session runs in this process land in the captured output
    # when they log during the call (a dependency's health, at info): not the CLI's.
    lines = ANSI.sub("", result.output).splitlines()
    return result.exit_code, "\n".join(line for line in lines if not LOG_LINE.match(line))


async def test_status_tells_two_replicas_apart_and_says_which_one_is_frozen(
    infra: Any, tmp_path: Path
) -> None:
    settings = infra.settings()
    (live, live_address), (frozen, frozen_address) = (
        replica(settings, tmp_path / f"events-{i}.log") for i in (1, 2)
    )
    try:
        for process, address in ((live, live_address), (frozen, frozen_address)):

            async def serving(address: str = address) -> bool:
                return await grpc_health(settings, address, EVENTS) == "SERVING"

            await process.wait_until(serving, "SERVING")
        frozen.freeze()
        nowhere = {name: f"127.0.0.1:{free_port()}" for name in ("AGENTS_ADDRESS", "RAG_ADDRESS")}
        env = {
            "AMELIA_DATA_DIR": str(tmp_path / "no-mesh"),
            "DATABASE_URL": settings.DATABASE_URL,
            "NATS_URL": settings.NATS_URL,
            "EVENTS_ADDRESS": f"{live_address},{frozen_address}",
            "PORT": str(free_port()),
            **nowhere,
        }
        code, output = await asyncio.to_thread(status_at_80_columns, env)
    finally:
        frozen.kill()
        live.kill()
    assert code == 1, output  # a part is down
    assert max(len(line) for line in output.splitlines()) <= 80, output
    rows = [line for line in output.splitlines() if line.startswith("│ events ")]
    assert len(rows) == 2, output  # both replicas named `events`: told apart by address
    live_row = next(line for line in rows if f"grpc://{live_address} " in line)
    assert "SERVING" in live_row, output
    frozen_row = next(line for line in rows if f"grpc://{frozen_address} " in line)
    assert "NO_ANSWER" in frozen_row and "DEADLINE_EXCEEDED" not in output, output
    start = output.splitlines().index(frozen_row)
    said = ""
    for line in output.splitlines()[start:]:
        if line.startswith("└") or (said and not line.startswith("│  ")):
            break
        said += " " + line.split("│")[4]
    assert " ".join(said.split()) == "no answer within 2 s (frozen or overloaded?)", output
