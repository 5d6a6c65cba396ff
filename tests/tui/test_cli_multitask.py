"""A second run on a busy thread, as LangGraph Server's clients send it: `multitask_strategy`
in the run of `POST /v1/runs`' JSON body, and `amelia run --thread … --multitask enqueue`, which
says what its run waits for and follows it to its end — on the TUI tests' real mesh."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from cli_helpers import amelia
from test_cli_output import cli_env, row_of
from test_cli_stranger import AMELIA
from tui_helpers import DEADLINE, TuiMesh

PLAN = {"message": "a plan", "model": "offline:echo"}  # pauses at its approval


async def wait_paused(mesh: TuiMesh, name: str) -> None:
    async with asyncio.timeout(DEADLINE):
        while True:
            if (await mesh.get(f"/v1/{name}"))["run"]["status"] == "RUN_STATUS_PAUSED":
                return
            await asyncio.sleep(0.1)


async def enqueue_from_the_cli(
    mesh: TuiMesh, tmp_path: Path, thread: str, message: str, strategy: str = "enqueue"
) -> asyncio.subprocess.Process:
    """`amelia run chat --thread <thread> --multitask enqueue` (or `strategy`), its output
    piped."""
    env = os.environ | cli_env(mesh, tmp_path / "none") | {"COLUMNS": "80", "PYTHONUNBUFFERED": "1"}
    return await asyncio.create_subprocess_exec(
        *AMELIA,
        *("run", "chat", "x", "--thread", thread, "--multitask", strategy),
        *("--input", json.dumps({"message": message, "model": "offline:transcript"})),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_enqueue_over_http_and_from_the_cli(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    first = (
        await tui_mesh.post("/v1/runs", {"run": {"workflow": "workflows/plan", "input": PLAN}})
    )["run"]
    thread = first["thread"]
    await wait_paused(tui_mesh, first["name"])  # a paused run keeps the thread's queue waiting
    refused = await tui_mesh.http.post(
        "/v1/runs", json={"run": {"workflow": "workflows/plan", "thread": thread, "input": PLAN}}
    )
    assert refused.status_code == 400 and refused.json()["code"] == 9, refused.text
    second = await tui_mesh.post(
        "/v1/runs",
        {
            "run": {
                "workflow": "workflows/chat",
                "thread": thread,
                "input": {"message": "second", "model": "offline:echo"},
                "multitask_strategy": "enqueue",  # (LangGraph's spelling; multitaskStrategy too)
            }
        },
    )
    second = second["run"]
    assert second["status"] == "RUN_STATUS_QUEUED" and second["queuedBehind"] == first["name"]
    assert second["multitaskStrategy"] == "enqueue"

    cli = await enqueue_from_the_cli(tui_mesh, tmp_path, thread, "third")
    assert cli.stdout is not None
    shown = ""
    async with asyncio.timeout(DEADLINE):
        while "queued behind" not in shown:
            line = (await cli.stdout.readline()).decode()
            assert line, shown
            shown += line
        assert f"queued behind {first['name']}: it starts once that run ends" in shown, shown
        await tui_mesh.post(f"/v1/{first['name']}:resume", {"answer": "approve"})
        shown += (await cli.stdout.read()).decode()
        assert await cli.wait() == 0, shown
    assert "\nuser: second\nassistant: second\nuser: third\n" in shown, shown
    assert ": completed" in shown, shown
    done = (await tui_mesh.get(f"/v1/{second['name']}"))["run"]
    assert done["status"] == "RUN_STATUS_COMPLETED" and done["queuedBehind"] == ""


async def test_enqueue_says_queued_at_once_even_when_the_wait_is_short(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    """CreateRun's reply names the run it waits behind: said before anything streams, not at
    the first 3 s check (the thread's run here ends as soon as the CLI's run is created)."""
    first = (
        await tui_mesh.post("/v1/runs", {"run": {"workflow": "workflows/plan", "input": PLAN}})
    )["run"]
    await wait_paused(tui_mesh, first["name"])
    cli = await enqueue_from_the_cli(tui_mesh, tmp_path, first["thread"], "short")
    assert cli.stdout is not None
    async with asyncio.timeout(DEADLINE):
        shown = (await cli.stdout.readline()).decode()  # `runs/… in threads/…`: created
        assert f" in {first['thread']}" in shown, shown
        await tui_mesh.post(f"/v1/{first['name']}:resume", {"answer": "approve"})
        shown += (await cli.stdout.read()).decode()
        assert await cli.wait() == 0, shown
    said = f"queued behind {first['name']}: it starts once that run ends"
    assert said in shown and shown.index(said) < shown.index("user: short"), shown


async def test_status_counts_the_runs_waiting_behind_a_threads_run(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    """`amelia status` and GET /v1/queue count the runs queued behind a thread's run apart from
    those waiting for a worker (they showed "runs queued 0" while 3 waited)."""
    first = (
        await tui_mesh.post("/v1/runs", {"run": {"workflow": "workflows/plan", "input": PLAN}})
    )["run"]
    await wait_paused(tui_mesh, first["name"])
    for n in range(3):
        run = {"workflow": "workflows/chat", "thread": first["thread"]}
        run |= {"input": {"message": f"q{n}", "model": "offline:echo"}}
        await tui_mesh.post("/v1/runs", {"run": run | {"multitask_strategy": "enqueue"}})
    assert (await tui_mesh.get("/v1/queue"))["waitingBehindRuns"] == "3"
    _, shown = await asyncio.to_thread(amelia, cli_env(tui_mesh, tmp_path / "none"), "status")
    assert row_of(shown, "waiting behind a thread's run").split("│")[2].strip() == "3", shown
    await tui_mesh.post(f"/v1/{first['name']}:cancel", {})


async def test_interrupt_from_the_cli_says_the_run_is_being_stopped(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    """QA s26: `--multitask interrupt` said "queued behind runs/…: it starts once that run
    ends" of a run it was stopping."""
    first = (
        await tui_mesh.post("/v1/runs", {"run": {"workflow": "workflows/plan", "input": PLAN}})
    )["run"]
    await wait_paused(tui_mesh, first["name"])
    cli = await enqueue_from_the_cli(tui_mesh, tmp_path, first["thread"], "now", "interrupt")
    assert cli.stdout is not None
    async with asyncio.timeout(DEADLINE):
        shown = (await cli.stdout.read()).decode()
        assert await cli.wait() == 0, shown
    said = f"interrupting {first['name']} (its state kept): this run starts once it has stopped"
    assert said in " ".join(shown.split()), shown
    assert "it starts once that run ends" not in shown, shown
    assert "user: now" in shown, shown
