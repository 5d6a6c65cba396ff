"""`amelia … --help` of every command at 80 columns: nothing cut, no type beside a flag."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.core import TyperCommand, TyperGroup
from typer.testing import CliRunner

from amelia_cli.main import app

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BOX = "│╭╮╰╯─"


def _paths(command: TyperCommand | TyperGroup, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subs = command.commands.items() if isinstance(command, TyperGroup) else []
    return [path, *(p for name, sub in subs for p in _paths(sub, (*path, name)))]  # type: ignore[arg-type]


ROOT: TyperGroup = typer.main.get_command(app)  # type: ignore[assignment]
PATHS = _paths(ROOT)


def _command(path: tuple[str, ...]) -> TyperCommand | TyperGroup:
    command: TyperCommand | TyperGroup = ROOT
    for name in path:
        command = command.commands[name]  # type: ignore[union-attr,assignment]
    return command


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.output)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "amelia")
def test_help_fits_80_columns_with_every_word_whole(path: tuple[str, ...]) -> None:
    shown = _help(path)
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= 80, shown
    # A flag takes no value: no `<bool>` beside it (typer 0.29 shows one unless told).
    assert "<bool>" not in shown, shown
    words = {w for line in lines for w in line.translate({ord(c): " " for c in BOX}).split()}
    command = _command(path)
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    if isinstance(command, TyperGroup):  # the command list: each one's first paragraph
        listed = [sub for sub in command.commands.values() if not sub.hidden]  # not `runs delete`
        texts += [(sub.help or "").split("\n\n")[0] for sub in listed]
    written = {w for text in texts for w in text.replace("\b", " ").split()}
    cut = sorted(w for w in written if w not in words)
    assert not cut, f"words not shown whole: {cut}\n{shown}"


def test_every_command_is_listed() -> None:
    """The list above is the CLI's: a command added later is checked too."""
    assert {" ".join(p) for p in PATHS} >= {"", "up", "status", "runs ls", "docs show", "tui"}
    assert len(PATHS) >= 29


def test_down_help_says_it_stops_a_foreground_mesh_too() -> None:
    """`amelia down` stops whatever `amelia up` runs here (README), not only a detached one."""
    shown = " ".join(_help(("down",)).translate({ord(c): " " for c in BOX}).split())
    assert "make run" in shown and "--detach" in shown, shown
    assert "Stop a mesh started with `amelia up --detach`" not in shown, shown


def test_run_timeout_help_says_its_range_once() -> None:
    """QA s26: `--timeout [x>=0] … [default: 0]` beside "1 to 604800": the range in words
    only, and a value out of it refused in those words."""
    shown = " ".join(_help(("run",)).translate({ord(c): " " for c in BOX}).split())
    assert "--timeout SECONDS Seconds this run may take, 1 to 604800 (7 days)" in shown, shown
    assert "x>=0" not in shown and "[default: 0]" not in shown, shown
    result = CliRunner().invoke(app, ["run", "chat", "hi", "--timeout", "-5"])
    assert result.exit_code == 2 and "not within 1 to 604800 seconds" in result.output
