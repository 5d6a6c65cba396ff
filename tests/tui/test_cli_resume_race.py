"""Two answers to one question (two people, two terminals): the one that lost the race is told
the run was already answered, not just the run's state ("is QUEUED, not PAUSED", QA); and
`amelia runs resume --request-id` sent again with the same answer gets the run back.

The model waits 5 s before each word, so after the answer the run stays in its next node (the
question still on it) while the other answers arrive: no timing is asserted, the window is wide."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from cli_helpers import amelia
from test_cli_output import cli_env
from test_cli_stranger import amelia_process
from tui_helpers import TuiMesh

SLOW = {"message": "Add a --verbose flag", "model": "offline:say:ok?delay_ms=5000"}


async def test_the_losing_answer_is_told_it_was_already_answered(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    code, shown = await asyncio.to_thread(
        amelia_process, env, "run", "plan", "x", "--input", json.dumps(SLOW)
    )
    assert code == 0 and "paused; answer with" in shown, shown
    run_name = shown.split()[0]
    request_id = f"answer-{uuid.uuid4()}"
    try:
        code, shown = await asyncio.to_thread(
            amelia, env, "runs", "resume", run_name, "approve", "--request-id", request_id
        )
        assert code == 0, shown
        code, lost = await asyncio.to_thread(amelia, env, "runs", "resume", run_name, "reject")
        assert code == 1, lost
        said = " ".join(lost.split())
        assert f"FAILED_PRECONDITION: {run_name} was already answered (it is " in said, lost
        assert "this answer was not used" in said and "not PAUSED" not in said, lost
        # The winner's answer sent again with its id (a lost reply): the run, not an error.
        code, again = await asyncio.to_thread(
            amelia, env, "runs", "resume", run_name, "approve", "--request-id", request_id
        )
        assert code == 0 and again.startswith(f"{run_name}: "), again
    finally:
        await asyncio.to_thread(amelia, env, "runs", "cancel", run_name)
