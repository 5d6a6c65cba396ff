"""A part `amelia up` gave up on is said as such, and a second `amelia up` gets it back (QA s26:
`kill -9` of the agents service five times in a minute → FAILED in mesh.json; then every command
said "is the mesh running? … `amelia up` starts it", and `amelia up` refused: "already running
here (pid …)").

The real `Supervisor` runs a stand-in agents service (a process that listens nowhere) and the
test SIGKILLs it until it is given up on; `amelia runs ls` and `amelia up` run as the real CLI
process against that supervisor's mesh.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from amelia_cli.mesh import ServiceSpec
from amelia_cli.supervisor import REVIVE_SIGNAL, RestartPolicy, Supervisor, UnitState, state_file
from amelia_common.embedded import free_port
from amelia_common.settings import Settings


@dataclass(frozen=True)
class StandIn(ServiceSpec):
    code: str = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code]


AGENTS = StandIn(
    "agents",
    "",
    "amelia.v1.AgentService",
    "AGENTS_GRPC_PORT",
    address_setting="AGENTS_ADDRESS",
    code="import time; time.sleep(600)",
)


async def until(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def amelia(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_ADDRESS") and k not in ("DATABASE_URL", "NATS_URL")
    }
    env |= {"AMELIA_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "amelia_cli", *args],
        env=env,
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def mesh_json(supervisor: Supervisor) -> dict[str, object]:
    state: dict[str, object] = json.loads(state_file(supervisor.settings.data_dir).read_text())
    return state


async def test_a_part_given_up_on_is_said_and_a_second_up_starts_it_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    supervisor = Supervisor(
        Settings(_env_file=None, AMELIA_DATA_DIR=data_dir, AGENTS_GRPC_PORT=free_port()),  # type: ignore[call-arg]
        services=(AGENTS,),
        policy=RestartPolicy(burst=5, window=60, first_delay=0.05),
    )
    await supervisor.start_services()
    stop = asyncio.Event()
    watching = asyncio.create_task(supervisor.watch(stop))
    loop = asyncio.get_running_loop()
    try:
        unit = supervisor.services["agents"]
        for _ in range(5):  # as QA did: kill -9, five times in a minute
            await until(lambda: unit.state == UnitState.RUNNING, "agents running")
            os.kill(unit.pid() or 0, signal.SIGKILL)
            await until(lambda: unit.state != UnitState.RUNNING, "the crash noticed")
        await until(lambda: unit.state == UnitState.FAILED, "agents given up on")
        await until(lambda: mesh_json(supervisor)["units"]["agents"]["state"] == "FAILED", "json")  # type: ignore[index]

        # A supervisor that cannot be asked (as one started before this change): what to do.
        done = await amelia(data_dir, "runs", "ls")
        said = " ".join(done.stderr.split())
        assert done.returncode == 1, done
        assert "the agents service at 127.0.0.1:" in said, said
        assert f"`amelia up` (pid {os.getpid()}) gave up on agents after 4 restarts" in said, said
        assert "killed by SIGKILL" in said and str(data_dir / "logs" / "agents.log") in said, said
        assert "stop `amelia up` (Ctrl-C in its terminal, or `amelia down`) and run it" in said
        assert "is the mesh running?" not in said, said
        done = await amelia(data_dir, "up")
        said = " ".join(done.stderr.split())
        assert done.returncode == 1 and "It gave up on agents" in said, done
        assert unit.state == UnitState.FAILED  # it was not signalled: it does not handle it

        # One that handles it: `amelia up` in another terminal starts it again.
        supervisor.revive_on(loop)
        await until(lambda: mesh_json(supervisor).get("revive_signal") == "SIGUSR1", "said")
        done = await amelia(data_dir, "runs", "ls")
        said = " ".join(done.stderr.split())
        assert "gave up on agents after 4 restarts" in said, said
        assert "`amelia up` in another terminal starts it again" in said, said
        old = unit.pid()
        done = await amelia(data_dir, "up")
        assert done.returncode == 0, done
        said = " ".join(done.stdout.split())
        assert "asked it to start again what it gave up on: agents" in said, said
        await until(lambda: unit.state == UnitState.RUNNING, "agents started again")
        assert unit.pid() not in (None, old) and not unit.crashes
        await until(
            lambda: mesh_json(supervisor)["units"]["agents"]["state"] == "RUNNING",  # type: ignore[index]
            "mesh.json says it runs",
        )
        # Nothing given up on: `amelia up` refuses as before.
        done = await amelia(data_dir, "up")
        assert done.returncode == 1 and "already running here" in done.stderr, done
    finally:
        loop.remove_signal_handler(REVIVE_SIGNAL)
        stop.set()
        await watching
        await supervisor.stop(grace=10)
