"""`amelia`'s own words and listings as a stranger at an 80-column terminal sees them: every
command it names exists, help text flows, names and times stay whole on one line (so they can
be copied), and `status` counts idle workers too."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import typer.main
from cli_helpers import amelia, quoted_commands, texts_naming_commands, unknown_part
from tui_helpers import DEADLINE, TOKEN, TuiMesh
from typer.core import TyperCommand, TyperGroup

from amelia_cli.main import app

REPO = Path(__file__).resolve().parents[2]
ADDRESSES = ("EVENTS_ADDRESS", "AGENTS_ADDRESS", "RAG_ADDRESS")  # what the gateway is given
TIME = r"(\d+[smhd] ago|now)"
TEXT = "The quillwort survey counts every rosette along the northern shore in late August. " * 12


def test_every_command_the_cli_and_the_docs_name_exists() -> None:
    assert unknown_part("docs list") == "list"  # what `amelia ingest` used to name
    assert unknown_part("runs ls --nope") == "--nope"
    wrong = [
        f"{path.relative_to(REPO)}: `amelia {quoted}` ({part} is not a command or option)"
        for path, text in texts_naming_commands(REPO)
        for quoted in quoted_commands(text)
        if (part := unknown_part(quoted))
    ]
    assert not wrong, "\n".join(wrong)


def _every_command(command: TyperCommand | TyperGroup) -> list[TyperCommand | TyperGroup]:
    subs = command.commands.values() if isinstance(command, TyperGroup) else []
    return [command, *(c for sub in subs for c in _every_command(sub))]  # type: ignore[arg-type]


def test_help_flows_to_the_terminal_width() -> None:
    for command in _every_command(typer.main.get_command(app)):  # type: ignore[arg-type]
        for paragraph in (command.help or "").split("\n\n"):
            assert "\n" not in paragraph or paragraph.startswith("\b"), (command.name, paragraph)
    code, shown = amelia({}, "--help")
    assert code == 0, shown
    assert max(len(line) for line in shown.splitlines()) <= 80, shown
    lines = [" ".join(line.strip("│ ").split()) for line in shown.splitlines()]
    # Each command's help fills its lines: a sentence goes on where the line has room.
    assert any(line.endswith("(unchanged files cost nothing).") for line in lines), shown
    assert any("the local model and the run queue." in line for line in lines), shown


def cli_env(mesh: TuiMesh, data_dir: Path) -> dict[str, str]:
    """The settings `amelia` needs to reach the TUI tests' mesh (no `amelia up` state)."""
    s = mesh.settings
    return {
        "AMELIA_DATA_DIR": str(data_dir),
        "AMELIA_API_TOKEN": TOKEN,
        "DATABASE_URL": s.DATABASE_URL,
        "NATS_URL": s.NATS_URL,
        "EVENTS_STREAM": s.EVENTS_STREAM,
        "RUNS_QUEUE_STREAM": "AMELIA_RUNS_TUI",
        **{key: mesh.gateway.env[key] for key in ADDRESSES},
        "PORT": str(mesh.gateway.port),
        "LOCAL_MODEL": "off",
    }


def row_of(shown: str, name: str) -> str:
    """The line that names `name` (whole: a name never wraps)."""
    lines = [line.rstrip() for line in shown.splitlines() if name in line]
    assert lines, f"{name} not whole on one line in:\n{shown}"
    return lines[0]


async def eventually(check: Callable[[], Awaitable[bool]], seen: Callable[[], object]) -> None:
    """Ask `check()` again until it holds (a generous deadline: a busy machine is slow)."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, seen()
        await asyncio.sleep(0.2)


def fits(shown: str, columns: int = 80) -> bool:
    return max(len(line) for line in shown.splitlines()) <= columns


async def test_listings_keep_names_and_times_whole_at_80_columns(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    env = cli_env(tui_mesh, tmp_path / "no-mesh-here")
    document = tmp_path / "the-quillwort-survey-of-the-northern-shore-in-late-august.md"
    document.write_text(f"# Quillwort survey\n\n{TEXT}")
    code, ingested = await asyncio.to_thread(amelia, env, "ingest", str(document))
    assert code == 0, ingested
    assert "(`amelia docs ls` shows each document's state)" in " ".join(ingested.split())

    code, found = await asyncio.to_thread(
        amelia, env, "search", "quillwort rosette", "--mode", "keyword", "-k", "2"
    )
    assert code == 0 and fits(found), found
    # Where a passage comes from is whole: its offsets and its document's name.
    source = re.search(r"chars (\d+)-(\d+)\s+(documents/[0-9a-f-]{36})\n", found)
    assert source is not None, found
    assert int(source.group(2)) > int(source.group(1))
    name = source.group(3)

    code, listed = await asyncio.to_thread(amelia, env, "docs", "ls")
    assert code == 0 and fits(listed), listed
    assert re.search(
        r"\bthe-quillwort-\S*\s+(indexing \d+%( \d+/\d+)?|ready)$", row_of(listed, name)
    ), listed

    created = (
        await tui_mesh.post(
            "/v1/runs", {"run": {"workflow": "workflows/echo", "input": {"message": "hello"}}}
        )
    )["run"]
    run_id = created["name"].split("/")[1]
    status: dict[str, str] = {}

    async def completed() -> bool:
        status.update((await tui_mesh.get(f"/v1/runs/{run_id}"))["run"])
        return status.get("status") == "RUN_STATUS_COMPLETED"

    await eventually(completed, lambda: status)
    code, runs = await asyncio.to_thread(
        amelia, env, "runs", "ls", "--status", "completed", "--limit", "5"
    )
    assert code == 0 and fits(runs), runs
    # `echo` when another of the 5 has a longer target (named as `amelia run` takes them).
    assert re.search(rf"\s(workflows/)?echo\s+completed\s+{TIME}$", row_of(runs, created["name"]))
    assert "error" not in runs.splitlines()[0], runs  # empty in every row: left out

    code, wide = await asyncio.to_thread(amelia, env, "docs", "ls", columns=120)
    assert fits(wide, 120), wide
    # Room for every column while it is ready; a longer "indexing 100% 3/3" state (at load, the
    # document may still be indexing) drops the size first, as narrow terminals do.
    assert re.search(
        rf"\bmarkdown .*\b(indexing \d+% \d+/\d+\s+\d+|ready\s+\d+\s+\d+)\s+{TIME}$",
        row_of(wide, name),
    ), wide


async def test_an_empty_listing_says_so(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    """QA F8: `crons ls` with no crons printed a bare header and a rule; every listing says
    `no <things>`, as `amelia search` says `no passages matched`."""
    env = cli_env(tui_mesh, tmp_path / "no-mesh-here")
    agent = f"none-{uuid.uuid4().hex[:8]}"
    code, shown = await asyncio.to_thread(
        amelia, env, "agents", "create", agent, "--model", "offline:echo"
    )
    assert code == 0, shown
    nobody = f"nobody={uuid.uuid4().hex}"
    for args, said in (
        (("crons", "ls", "--agent", agent), "no crons"),
        (("runs", "ls", "--agent", agent), "no runs"),
        (("threads", "ls", "--metadata", nobody), "no threads"),
    ):
        code, shown = await asyncio.to_thread(amelia, env, *args)
        assert code == 0 and shown.strip() == said, (args, shown)


async def test_status_counts_idle_workers_as_ready(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    """The TUI mesh's agents service runs 2 worker loops; idle, both poll the queue."""
    env = cli_env(tui_mesh, tmp_path / "no-mesh-here")
    shown: list[str] = []

    async def both_ready() -> bool:
        shown[:] = [(await asyncio.to_thread(amelia, env, "status"))[1]]
        return bool(re.search(r"workers\s*│\s*0 busy, 2 ready", shown[0]))

    await eventually(both_ready, lambda: shown[0])
