"""`amelia runs wait` (WaitRun) and `amelia run --webhook` on the TUI tests' real mesh: the wait
shows the ended run as JSON; one that runs out says so in words and leaves the run going; the
webhook reaches a real local HTTP server with the run's output."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from cli_helpers import amelia
from test_cli_output import cli_env
from test_cli_stranger import amelia_process, slow_run_process
from tui_helpers import DEADLINE, TuiMesh
from webhook_receiver import receiving

ECHO = {"message": "the kingfisher waits", "model": "offline:echo"}


async def test_runs_wait_shows_the_run_and_run_webhook_posts_it(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    async with receiving() as receiver:
        code, shown = await asyncio.to_thread(
            amelia_process,
            env,
            "run",
            "echo",
            "x",
            "--input",
            json.dumps(ECHO),
            "--webhook",
            receiver.url,
        )
        assert code == 0, shown
        run = shown.split()[0]
        (hook,) = await receiver.wait_for(1)
    assert hook.body["name"] == run, shown
    assert hook.body["output"]["message"] == ECHO["message"]
    code, shown = await asyncio.to_thread(amelia, env, "runs", "wait", run)
    assert code == 0, shown
    waited = json.loads(shown)
    assert waited["status"] == "RUN_STATUS_COMPLETED" and waited["webhook"] == receiver.url


async def test_runs_wait_that_runs_out_says_so_and_the_run_goes_on(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    process = await slow_run_process(env)
    assert process.stdout is not None
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), DEADLINE)).decode()
        run = first.split()[0]
        assert run.startswith("runs/"), first
        code, shown = await asyncio.to_thread(amelia, env, "runs", "wait", run, "--timeout", "1")
        assert code == 1, shown
        said = " ".join(shown.split())
        assert said.startswith(f"DEADLINE_EXCEEDED: {run} is still "), shown
        assert "after 1 s of waiting (the run goes on; wait again, or follow it with" in said
        assert process.returncode is None  # `amelia run` still streams it
    finally:
        process.send_signal(signal.SIGINT)  # cancels the run
        await asyncio.wait_for(process.communicate(), DEADLINE)
