"""`amelia crons create|ls|get|pause|resume|trigger|update|rm` at 80 columns on the TUI tests' real
mesh: what a person types to schedule an agent, see it, stop and restart it, run it now and
remove it. The schedule is yearly, so the mesh's scheduler never fires it during the test;
firing on time is tests/agents/test_agents_crons.py's."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

from cli_helpers import amelia
from test_cli_output import cli_env, row_of
from tui_helpers import TuiMesh

CRON = re.compile(r"crons/[0-9a-f-]{36}")


async def test_a_cron_from_the_terminal(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    agent = f"cron-{uuid.uuid4().hex[:8]}"
    code, shown = await asyncio.to_thread(
        amelia, env, "agents", "create", agent, "--model", "offline:echo"
    )
    assert code == 0, shown

    async def run(*args: str) -> str:
        code, shown = await asyncio.to_thread(amelia, env, "crons", *args)
        assert code == 0, shown
        assert all(len(line) <= 80 for line in shown.splitlines()), shown
        return shown

    shown = await run("create", agent, "0 9 1 1 *", "-m", "happy new year", "--tz", "Europe/Paris")
    name = CRON.search(shown).group(0)  # type: ignore[union-attr]
    assert shown.splitlines()[0] == name
    assert "0 9 1 1 * (Europe/Paris)" in shown and "-01-01T08:00:00Z" in shown, shown

    listed = await run("ls", "--agent", agent)
    row = row_of(listed, name)
    assert "0 9 1 1 *" in row and re.search(r"in \d+d|\d{4}-01-01", row), listed  # next run

    paused = await run("pause", name)
    assert paused.strip() == f"{name}: paused", paused
    assert "paused" in row_of(await run("ls", "--agent", agent), name)
    resumed = await run("resume", name.removeprefix("crons/"))
    assert resumed.startswith(f"{name}: active, next run in "), resumed

    triggered = await run("trigger", name)
    assert re.fullmatch(r"runs/[0-9a-f-]{36}\n  in threads/[0-9a-f-]{36}", triggered.strip()), (
        triggered
    )
    shown = await run("get", name)
    assert "1 fired, 0 skipped (thread busy), 0 failed" in shown, shown
    assert "fired (trigger)" in row_of(shown, triggered.split()[0]), shown

    assert "fired " in row_of(await run("ls", "--agent", agent), name)  # its last tick

    changed = await run("update", name, "--multitask", "enqueue", "--end", "2099-01-01T00:00")
    assert "enqueue: the run waits for the thread's run" in changed, changed
    assert "2099-01-01T00:00:00Z" in changed, changed
    code, refused = await asyncio.to_thread(
        amelia, env, "crons", "update", name, "--multitask", "later"
    )
    assert code == 1 and "cron.multitask_strategy 'later' is not one of: reject" in refused
    code, refused = await asyncio.to_thread(amelia, env, "crons", "update", name)
    assert code == 2 and "nothing to change" in refused, refused

    code, refused = await asyncio.to_thread(amelia, env, "crons", "create", agent, "* * *")
    assert code == 1 and "INVALID_ARGUMENT: cron.schedule '* * *' must have 5 fields" in refused

    code, refused = await asyncio.to_thread(amelia, env, "crons", "create", agent, "H * * * *")
    said = " ".join(refused.split())
    assert code == 1 and "the minute field's 'H' is not a number in 0-59" in said, refused
    assert "Hashed" not in said, refused
    assert name not in await run("ls", "--workflow", "chat")  # an agent's cron
    code, refused = await asyncio.to_thread(amelia, env, "crons", "ls", "--workflow", "nope")
    assert code == 1 and "'workflows/nope' is not a workflow" in " ".join(refused.split())

    assert (await run("rm", name)).strip() == f"deleted {name}"
    code, gone = await asyncio.to_thread(amelia, env, "crons", "get", name)
    assert code == 1 and f"NOT_FOUND: {name} does not exist" in gone, gone
