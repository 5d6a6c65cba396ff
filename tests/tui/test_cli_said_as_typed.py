"""What `amelia` says back in the words a person typed and reads, on the TUI tests' real mesh
(QA): a refused value named by its flag (`--multitask`, not `run.multitask_strategy`) and the
RPC a message points at as the command (`amelia runs steps`, not `ListRunSteps`); a run with
no steps says why instead of an empty table; a question's whole numbers as integers."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from cli_helpers import amelia
from test_cli_multitask import PLAN, wait_paused
from test_cli_output import cli_env
from test_cli_stranger import amelia_process
from tui_helpers import DEADLINE, TuiMesh

CHECKPOINT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ECHO = json.dumps({"message": "the heron", "model": "offline:echo"})


def said(shown: str) -> str:
    """What was printed, its lines joined (a message folds at 80 columns)."""
    return " ".join(shown.split())


async def _paused_plan(mesh: TuiMesh) -> dict[str, str]:
    """A `plan` run paused at its approval question (its thread stays busy)."""
    run: dict[str, str] = (
        await mesh.post("/v1/runs", {"run": {"workflow": "workflows/plan", "input": PLAN}})
    )["run"]
    await wait_paused(mesh, run["name"])
    return run


async def _ended(mesh: TuiMesh, name: str) -> None:
    """Once the run has ended (or paused: not queued or running)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            status = (await mesh.get(f"/v1/{name}"))["run"]["status"]
            if status not in ("RUN_STATUS_QUEUED", "RUN_STATUS_RUNNING"):
                return
            await asyncio.sleep(0.1)


async def test_a_refused_value_is_named_by_the_flag_that_gave_it(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    refusals = [
        (
            ("run", "echo", "x", "--input", ECHO, "--multitask", "sometimes"),
            "INVALID_ARGUMENT: --multitask 'sometimes' is not one of: reject, enqueue",
            "multitask_strategy",
        ),
        (
            ("run", "echo", "x", "--input", ECHO, "--timeout", "9999999"),
            "INVALID_ARGUMENT: --timeout 9999999s is out of range: use 1s to 604800s",
            "run.timeout",
        ),
        (
            ("run", "echo", "x", "--input", ECHO, "--webhook", "ftp://example.com/hook"),
            "INVALID_ARGUMENT: --webhook must be an http or https URL",
            "run.webhook",
        ),
        (
            ("agents", "create", "warbler", "--temperature", "9"),
            "INVALID_ARGUMENT: --temperature must be between 0 and 2",
            ": temperature",
        ),
        (
            ("crons", "create", "echo", "0 9 * * *", "-m", "x", "--tz", "Mars/Olympus"),
            "INVALID_ARGUMENT: --tz 'Mars/Olympus' is not an IANA time zone",
            "cron.timezone",
        ),
        (
            ("threads", "ls", "--sort", "size"),
            "INVALID_ARGUMENT: --sort must be one of: create_time",
            "order_by",
        ),
    ]
    for args, expected, api_word in refusals:
        code, shown = await asyncio.to_thread(amelia_process, env, *args)
        assert code == 1, (args, shown)
        assert expected in said(shown) and api_word not in shown, (args, shown)

    # A run's checkpoint: the argument by its name, and where to find one as a command.
    first = (
        await tui_mesh.post(
            "/v1/runs", {"run": {"workflow": "workflows/echo", "input": {"message": "x"}}}
        )
    )["run"]
    await _ended(tui_mesh, first["name"])
    code, shown = await asyncio.to_thread(amelia, env, "runs", "fork", first["name"], "step-2")
    assert code == 1, shown
    assert (
        "INVALID_ARGUMENT: CHECKPOINT 'step-2' is not a checkpoint id: take one from "
        "`amelia runs steps`"
    ) in said(shown), shown
    code, shown = await asyncio.to_thread(
        amelia, env, "threads", "state", first["thread"], "--checkpoint", "step-2"
    )
    assert code == 1, shown
    assert (
        "INVALID_ARGUMENT: --checkpoint 'step-2' is not a checkpoint id: take one from "
        "`amelia threads history`"
    ) in said(shown), shown


async def test_a_run_with_no_steps_says_why(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    """QA: `amelia runs steps` printed an empty table's header for a run with none."""
    env = cli_env(tui_mesh, tmp_path / "none")
    first = await _paused_plan(tui_mesh)
    behind = (
        await tui_mesh.post(
            "/v1/runs",
            {
                "run": {
                    "workflow": "workflows/echo",
                    "thread": first["thread"],
                    "input": {"message": "later"},
                    "multitaskStrategy": "enqueue",
                }
            },
        )
    )["run"]
    code, shown = await asyncio.to_thread(amelia, env, "runs", "steps", behind["name"])
    assert code == 0, shown
    assert (
        f"no steps recorded yet: the run is queued behind {first['name']}; a step is recorded "
        "as it starts"
    ) in said(shown), shown
    assert "checkpoint" not in shown, shown  # no table header with nothing under it

    await tui_mesh.post(f"/v1/{behind['name']}:cancel", {})
    await _ended(tui_mesh, behind["name"])
    code, shown = await asyncio.to_thread(amelia, env, "runs", "steps", behind["name"])
    assert code == 0, shown
    assert "no steps recorded: the run ended (cancelled) before its first step ran" in said(
        shown
    ), shown
    await tui_mesh.post(f"/v1/{first['name']}:cancel", {})

    code, shown = await asyncio.to_thread(amelia, env, "runs", "steps", first["name"])
    assert code == 0 and "discovery" in shown and CHECKPOINT.search(shown), shown


async def test_a_forked_questions_whole_numbers_are_integers(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    """QA: a fork whose `--values` put `{"steps": 3}` in the state asked its question with
    `"steps": 3.0` (a Struct's numbers are doubles), where `threads state` said 3."""
    env = cli_env(tui_mesh, tmp_path / "none")
    source = await _paused_plan(tui_mesh)
    await tui_mesh.post(f"/v1/{source['name']}:resume", {"answer": "approve"})
    await _ended(tui_mesh, source["name"])
    steps = (await tui_mesh.get(f"/v1/{source['name']}/steps"))["steps"]
    approval = next(step["checkpoint"] for step in steps if step["node"] == "approval")
    values = json.dumps({"design": {"steps": 3, "share": 0.5}})
    code, shown = await asyncio.to_thread(
        amelia_process, env, "runs", "fork", source["name"], approval, "--values", values, "-f"
    )
    assert code == 0, shown
    assert re.search(r'design: \{"(steps": 3, "share": 0\.5|share": 0\.5, "steps": 3)\}', shown), (
        shown
    )
    assert "3.0" not in shown, shown
    code, state = await asyncio.to_thread(amelia, env, "threads", "state", source["thread"])
    assert code == 0 and "3.0" not in state and '"steps": 3' in state, state
    forked = shown.split()[0]
    await tui_mesh.post(f"/v1/{forked}:cancel", {})
