"""`amelia run` of a run waiting in the queue (every worker busy) says so, instead of printing
nothing until a worker takes it; the run then streams to its end as usual."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from test_cli_output import cli_env, eventually
from test_cli_stranger import AMELIA, slow_run_process
from tui_helpers import DEADLINE, TuiMesh


async def test_a_run_waiting_for_a_worker_says_it_is_queued(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    busy = [await slow_run_process(env) for _ in range(2)]  # the mesh's two workers
    try:
        names = []
        for process in busy:
            assert process.stdout is not None
            first = (await asyncio.wait_for(process.stdout.readline(), DEADLINE)).decode()
            names.append(first.split()[0])
        states: dict[str, str] = {}

        async def both_running() -> bool:
            for name in names:
                states[name] = (await tui_mesh.get(f"/v1/{name}"))["run"]["status"]
            return all(state == "RUN_STATUS_RUNNING" for state in states.values())

        await eventually(both_running, lambda: states)
        request = {"message": "a short one", "model": "offline:echo"}
        waiting = await asyncio.create_subprocess_exec(
            *AMELIA,
            "run",
            "chat",
            "x",
            "--input",
            json.dumps(request),
            env=os.environ | env | {"COLUMNS": "80"},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert waiting.stdout is not None
        created = (await asyncio.wait_for(waiting.stdout.readline(), DEADLINE)).decode()
        said = (await asyncio.wait_for(waiting.stdout.readline(), DEADLINE)).decode()
        assert said.startswith("queued: ") and "waiting for a worker" in said, (created, said)
        for process in busy:  # Ctrl-C cancels their runs: the workers are free again
            process.send_signal(signal.SIGINT)
        out, errors = await asyncio.wait_for(waiting.communicate(), DEADLINE)
        text = out.decode()
        assert waiting.returncode == 0, (text, errors)
        assert f"{created.split()[0]}: completed" in text, (text, errors)
    finally:
        for process in busy:
            if process.returncode is None:
                process.kill()
            await process.wait()
