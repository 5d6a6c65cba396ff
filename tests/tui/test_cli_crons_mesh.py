"""`amelia crons create|ls|get|pause|resume|trigger|update|rm` at 80 columns on the TUI tests' real
mesh: what a person types to schedule an agent, see it, stop and restart it, run it now, change
it and remove it. The schedule is yearly, so the mesh's scheduler never fires it during the test;
firing on time is tests/agents/test_agents_crons.py's. One test waits (up to ~1 min, the mesh's
real clock) for a paused cron's end, to pause and resume a cron that has ended."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from cli_helpers import amelia
from test_cli_output import cli_env, eventually, row_of
from tui_helpers import TuiMesh

CRON = re.compile(r"crons/[0-9a-f-]{36}")
Run = Callable[..., Awaitable[str]]


async def _terminal(tui_mesh: TuiMesh, tmp_path: Path) -> tuple[dict[str, str], str, Run]:
    """The CLI's environment, a new `offline:echo` agent, and `run(*args)`: `amelia crons …`'s
    output, asserted to succeed within 80 columns."""
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

    return env, agent, run


async def test_a_cron_from_the_terminal(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    env, agent, run = await _terminal(tui_mesh, tmp_path)
    shown = await run("create", agent, "0 9 1 1 *", "-m", "happy new year", "--tz", "Europe/Paris")
    name = CRON.search(shown).group(0)  # type: ignore[union-attr]
    assert shown.splitlines()[0] == name
    assert "0 9 1 1 * (Europe/Paris)" in shown and "-01-01T08:00:00Z" in shown, shown

    # At 80 columns: the id without `crons/` (as every crons command takes it), the schedule,
    # the next run and what it runs (QA: the target was dropped); the ticks are `get`'s.
    cron_id = name.removeprefix("crons/")
    listed = await run("ls", "--agent", agent)
    row = row_of(listed, cron_id)
    assert "0 9 1 1 *" in row and re.search(r"in \d+d|\d{4}-01-01", row), listed  # next run
    assert row.endswith(f" {agent}"), listed

    paused = await run("pause", name)
    assert paused.strip() == f"{name}: paused", paused
    assert "paused" in row_of(await run("ls", "--agent", agent), cron_id)
    resumed = await run("resume", name.removeprefix("crons/"))
    assert resumed.startswith(f"{name}: active, next run in "), resumed

    triggered = await run("trigger", name)
    assert re.fullmatch(r"runs/[0-9a-f-]{36}\n  in threads/[0-9a-f-]{36}", triggered.strip()), (
        triggered
    )
    shown = await run("get", name)
    assert "1 fired, 0 skipped (thread busy), 0 failed" in shown, shown
    assert "fired (trigger)" in row_of(shown, triggered.split()[0]), shown

    code, wide = await asyncio.to_thread(amelia, env, "crons", "ls", "--agent", agent, columns=120)
    assert code == 0 and "fired " in row_of(wide, name), wide  # its last tick, with room
    assert f"agents/{agent}" in row_of(wide, name), wide

    changed = await run(
        "update", name, "-m", "happy new year!", "--metadata", "team=ops", "--end", "2099-01-01"
    )
    assert '{"message": "happy new year!"}' in changed, changed
    assert '{"team": "ops"}' in changed and "2099-01-01T00:00:00Z" in changed, changed
    assert "a new thread each tick: never busy" in changed, changed  # no --thread: no strategy
    changed = await run("update", name, "--input", '{"message": "hi", "n": 2}')
    shown_input = next(line for line in changed.splitlines() if line.startswith("input "))
    assert json.loads(shown_input.removeprefix("input ")) == {"message": "hi", "n": 2}, changed
    assert '{"team": "ops"}' in changed, changed  # kept: --input changes the input alone
    hooked = await run("update", name, "--webhook", "https://example.com/hooks/digest")
    assert "webhook   https://example.com/hooks/digest" in hooked, hooked
    unhooked = await run("update", name, "--no-webhook")
    assert "webhook" not in unhooked, unhooked
    code, refused = await asyncio.to_thread(
        amelia, env, "crons", "update", name, "--webhook", "file:///etc/passwd"
    )
    said = " ".join(refused.split())
    assert code == 1 and "--webhook must be an http or https URL" in said, refused
    code, refused = await asyncio.to_thread(
        amelia, env, "crons", "update", name, "--multitask", "enqueue"
    )
    said = " ".join(refused.split())
    # The flags typed, not the request's fields (QA: `cron.multitask_strategy`, `cron.thread`).
    assert code == 1 and "INVALID_ARGUMENT: --multitask 'enqueue' needs a cron" in said, said
    assert "without --thread each tick runs on a new thread, which is never busy" in said, said
    code, refused = await asyncio.to_thread(
        amelia, env, "crons", "update", name, "--end", "2026-12-03T14:03:00+25:00"
    )
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", refused).split())  # the error's box gone
    assert code == 2 and "is not an ISO time, e.g. 2026-12-03T14:03 (UTC)" in said, refused
    code, refused = await asyncio.to_thread(
        amelia, env, "crons", "update", name, "--multitask", "later"
    )
    assert code == 1 and "--multitask 'later' is not one of: reject" in refused, refused
    code, refused = await asyncio.to_thread(amelia, env, "crons", "update", name)
    assert code == 2 and "nothing to change" in refused, refused

    code, refused = await asyncio.to_thread(amelia, env, "crons", "create", agent, "* * *")
    assert code == 1 and "INVALID_ARGUMENT: SCHEDULE '* * *' must have 5 fields" in refused

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


async def test_pausing_and_resuming_a_cron_that_has_ended(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    """An ended cron keeps its paused flag: pause and resume say what they did and that it has
    ended, `ls` and `get` show both facts, and moving its end shows the flag alone."""
    _, agent, run = await _terminal(tui_mesh, tmp_path)
    # Paused from the start (no run fires), ending 2 s after the next minute's tick.
    now = dt.datetime.now(dt.UTC)
    end = now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1, seconds=2)
    shown = await run("create", agent, "* * * * *", "-m", "x", "--paused", "--end", end.isoformat())
    name = CRON.search(shown).group(0)  # type: ignore[union-attr]
    await asyncio.sleep((end - dt.datetime.now(dt.UTC)).total_seconds())

    async def ended() -> bool:
        return bool(json.loads(await run("get", name, "--json")).get("ended"))

    await eventually(ended, lambda: name)
    still = "(it has ended: no tick fires until its end is moved)"
    listed = (await run("ls", "--agent", agent)).splitlines()
    row = next(i for i, line in enumerate(listed) if name.removeprefix("crons/") in line)
    assert re.search(r" ended\b", listed[row]), "\n".join(listed)
    assert re.search(r" paused\b", listed[row + 1]), "\n".join(listed)  # under it
    assert " ".join((await run("resume", name)).split()) == f"{name}: resumed {still}"
    assert re.search(r"state +ended\n", await run("get", name))
    assert " ".join((await run("pause", name)).split()) == f"{name}: paused {still}"
    assert re.search(r"state +ended · paused\n", await run("get", name))
    moved = await run("update", name, "--end", "2099-01-01T00:00")
    assert re.search(r"state +paused\n", moved) and "2099-01-01T00:00:00Z" in moved, moved
    assert (await run("rm", name)).strip() == f"deleted {name}"
