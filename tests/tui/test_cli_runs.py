"""What the API does with a run that `amelia` had no command for: run it again (`runs rerun`),
list its steps with their checkpoints (`runs steps`) and run it again from one (`runs fork`),
and a chat that answers from documents (`run --context`), on the TUI tests' real mesh."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

from cli_helpers import amelia
from test_cli_output import cli_env
from test_cli_stranger import amelia_process, slow_run_process
from tui_helpers import DEADLINE, TuiMesh

from amelia_cli.tui.eventline import describe

ECHO = {"message": "the heron waits by the weir", "model": "offline:echo"}


async def _run(env: dict[str, str], *args: str) -> tuple[str, str]:
    """`amelia …` that makes a run: the new run's name and what was printed."""
    code, shown = await asyncio.to_thread(amelia_process, env, *args)
    assert code == 0, shown
    return shown.split()[0], shown


async def test_rerun_steps_and_fork_make_new_runs_of_the_same_work(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    first, _ = await _run(env, "run", "echo", "x", "--input", json.dumps(ECHO))

    again, shown = await _run(env, "runs", "rerun", first, "-f")
    assert again != first and again.startswith("runs/"), shown
    assert ECHO["message"] in shown and f"{again}: completed" in shown, shown

    code, steps = await asyncio.to_thread(amelia, env, "runs", "steps", first)
    assert code == 0, steps
    row = next(line for line in steps.splitlines() if " echo " in f" {line} ")
    assert "completed" in row, steps
    checkpoint = re.search(r"[0-9a-f]{8}-[0-9a-f-]{27}", row)
    assert checkpoint, steps  # whole on one line at 80 columns: it can be copied

    forked, shown = await _run(env, "runs", "fork", first, checkpoint.group(0), "-f")
    assert forked not in (first, again) and f"{forked}: completed" in shown, shown
    assert ECHO["message"] in shown, shown
    assert "picked up again" not in shown, shown

    code, shown = await asyncio.to_thread(
        amelia, env, "runs", "fork", first, checkpoint.group(0), "--values", "[1]"
    )
    assert code == 2 and "must be a JSON object ({...}), not an array" in shown, shown


async def test_run_context_answers_from_documents(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    word = f"zq{uuid.uuid4().hex[:8]}"
    document = tmp_path / "kestrel.md"
    document.write_text(f"# Kestrel Point\n\nMara Olsen ({word}) was the last keeper.\n")
    code, shown = await asyncio.to_thread(amelia, env, "ingest", str(document), columns=200)
    assert code == 0, shown

    question = f"Who was {word}?"
    request = json.dumps({"message": question, "model": "offline:echo"})
    run_name, shown = await _run(
        env, "run", "chat", question, "--input", request, "--context", "documents/*"
    )
    assert "· reading context… (" in shown and " passage" in shown, shown
    run = (await tui_mesh.get(f"/v1/{run_name}"))["run"]
    assert run["input"]["context_sources"] == ["documents/*"], run


async def test_run_piped_keeps_its_names_on_one_line_and_a_cancel_says_it_once(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    """Piped (rich's width is 80), `runs/… in threads/…` (90 characters) stays one line; a run
    cancelled with no reason ends `runs/…: cancelled`, not `cancelled — cancelled`."""
    env = cli_env(tui_mesh, tmp_path / "none")
    process = await slow_run_process(env)
    assert process.stdout is not None
    first = (await asyncio.wait_for(process.stdout.readline(), DEADLINE)).decode()
    assert re.fullmatch(r"runs/[0-9a-f-]{36} in threads/[0-9a-f-]{36}\n", first), first
    run_name = first.split()[0]
    code, shown = await asyncio.to_thread(amelia, env, "runs", "cancel", run_name)
    assert code == 0, shown
    out, errors = await asyncio.wait_for(process.communicate(), DEADLINE)
    text = out.decode()
    assert f"{run_name}: cancelled\n" in text and "— cancelled" not in text, (text, errors)


def test_the_event_log_and_the_tuis_activity_say_why_a_run_is_quiet() -> None:
    """`amelia events` and the TUI's activity pane (both `describe`) for the events of a run
    waiting for its model server, retrying a call, picked up again or answered."""
    message = "local: the local model server at http://127.0.0.1:8081/v1 is unreachable"
    said = [
        describe({"type": kind, "data": data})
        for kind, data in (
            ("run.model.waiting", {"server": "http://127.0.0.1:8081/v1", "message": message}),
            ("run.retry", {"error": "529 overloaded", "retry": 2.0, "of": 3.0, "delay_seconds": 1}),
            ("run.resumed", {"reason": "redelivered", "attempt": 2}),
            ("run.resumed", {"reason": "answer", "attempt": 2}),
            ("run.cancelled", {"reason": "cancelled"}),
            (
                "workflow.started",
                {"target": "workflows/echo", "forked_from": {"run": "runs/r1", "checkpoint": "c1"}},
            ),
        )
    ]
    assert said == [
        message,
        "trying again (2 of 3) in 1.00 s: 529 overloaded",
        "picked up again after an interruption — it continues from its last checkpoint",
        "resumed with the answer",
        "cancelled",
        "workflows/echo started, forked from runs/r1 at checkpoint c1",
    ]


async def test_run_timeout_is_set_per_run_and_its_failure_says_how(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    """`amelia run --timeout` gives this run its own limit (CreateRun `run.timeout`), and a run
    that ran out of time says how to give it more (QA: a long local answer failed at 300 s with
    no way to raise it from `amelia run`). What it streamed before it ran out of time is kept
    on the run as `output.partial`, and `amelia run` says so."""
    env = cli_env(tui_mesh, tmp_path / "none")
    message = "a b c d e f g h i j k l m n o p"
    slow = {"message": message, "model": "offline:echo?delay_ms=400"}
    code, shown = await asyncio.to_thread(
        amelia_process, env, "run", "chat", "x", "--input", json.dumps(slow), "--timeout", "2"
    )
    assert code != 0, shown
    assert "the run took longer than 2s" in shown, shown
    assert "amelia run --timeout SECONDS" in " ".join(shown.split()), shown
    said = " ".join(shown.split())
    assert "partial output: the " in said and "streamed before it stopped" in said, shown
    code, run_json = await asyncio.to_thread(amelia, env, "runs", "show", shown.split()[0])
    assert code == 0, run_json
    kept = json.loads(run_json)["output"]["partial"]
    assert kept and message.startswith(kept) and kept.strip() in shown, (kept, shown)
    assert f"the {len(kept)} characters" in said, shown


async def test_a_rejected_plan_is_said_rejected(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    """QA s26: a plan whose design was rejected read "completed" where the dashboard says
    "Rejected" (its output's `status`): `runs ls`, `runs resume` and `runs wait` say it."""
    env = cli_env(tui_mesh, tmp_path / "none")
    plan = {"message": "a plan to reject", "model": "offline:echo"}
    run = (await tui_mesh.post("/v1/runs", {"run": {"workflow": "workflows/plan", "input": plan}}))[
        "run"
    ]
    name = run["name"]
    async with asyncio.timeout(DEADLINE):
        while True:
            if (await tui_mesh.get(f"/v1/{name}"))["run"]["status"] == "RUN_STATUS_PAUSED":
                break
            await asyncio.sleep(0.1)
    code, shown = await asyncio.to_thread(amelia, env, "runs", "resume", name, "reject")
    assert code == 0, shown
    code, shown = await asyncio.to_thread(amelia, env, "runs", "wait", name)
    assert code == 0 and '"status": "rejected"' in shown, shown
    code, shown = await asyncio.to_thread(amelia, env, "runs", "ls", columns=200)
    row = next(line for line in shown.splitlines() if name in line)
    assert " rejected " in f" {row} " and "completed" not in row, shown
