"""`amelia run` at a terminal keeps reading the run's stream while its `>` prompt waits: a
question answered by another client is said ("answered elsewhere") and the run followed to its
outcome, instead of a prompt left waiting and FAILED_PRECONDITION once something is typed."""

from __future__ import annotations

import asyncio
import json
import os
import pty
from pathlib import Path

import pytest
from cli_helpers import amelia
from test_cli_output import cli_env, eventually
from test_cli_stranger import AMELIA
from tui_helpers import DEADLINE, TuiMesh


@pytest.mark.parametrize("where", ["elsewhere", "here"])
async def test_a_question_answered_elsewhere_is_said_and_the_run_followed_to_its_end(
    tui_mesh: TuiMesh, tmp_path: Path, where: str
) -> None:
    """Answered by another client (`runs resume`), or typed at the prompt as before."""
    env = cli_env(tui_mesh, tmp_path / "none")
    request = {"message": "Add a CSV export button to a todo app", "model": "offline:echo"}
    terminal, typing_end = pty.openpty()  # stdin is a terminal: the CLI asks the question
    try:
        process = await asyncio.create_subprocess_exec(
            *AMELIA,
            "run",
            "plan",
            "x",
            "--input",
            json.dumps(request),
            env=os.environ | env | {"COLUMNS": "80"},
            stdin=typing_end,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), DEADLINE)).decode()
        run_name = first.split()[0]
        assert run_name.startswith("runs/"), first
        status: dict[str, object] = {}

        async def paused() -> bool:
            status.update((await tui_mesh.get(f"/v1/{run_name}"))["run"])
            return status.get("status") == "RUN_STATUS_PAUSED"

        await eventually(paused, lambda: status)
        if where == "here":
            os.write(terminal, b"approve\n")
        else:
            code, said = await asyncio.to_thread(
                amelia, env, "runs", "resume", run_name, "reject: too vague"
            )
            assert code == 0, said
        out, errors = await asyncio.wait_for(process.communicate(), DEADLINE)
    finally:
        os.close(terminal)
        os.close(typing_end)
    text = out.decode()
    if where == "here":
        assert "· resumed with your answer\n" in text and "elsewhere" not in text, (text, errors)
    else:
        assert "> \n· answered elsewhere\n" in text, (text, errors)
    run = (await tui_mesh.get(f"/v1/{run_name}"))["run"]
    ended = run["status"]
    assert ended != "RUN_STATUS_PAUSED", text
    outcome = ended.removeprefix("RUN_STATUS_").lower()
    # A rejected plan completed: said `rejected`, as the dashboard says it (QA s26).
    said = "rejected" if (run.get("output") or {}).get("status") == "rejected" else outcome
    assert f"{run_name}: {said}" in text, (text, errors)
    assert process.returncode == (0 if outcome == "completed" else 1), (text, errors)
    assert "FAILED_PRECONDITION" not in text + errors.decode(), (text, errors)
