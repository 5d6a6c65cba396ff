"""`amelia …` as a person types it, in this process (settings read afresh), and the commands
the CLI's own words name."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import typer.main
from typer.core import TyperCommand, TyperGroup
from typer.testing import CliRunner

from amelia_cli.main import app
from amelia_common.settings import get_settings

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")  # the mesh in this process logs
# A command quoted in backticks: `amelia docs ls`, `amelia runs ls\|show [-f]`.
QUOTED = re.compile(r"`amelia( [^`]*)?`")


def amelia(env: dict[str, str], *args: str, columns: int = 80) -> tuple[int, str]:
    """Exit code and what a terminal `columns` wide shows, without the log lines of the services
    running in this process (call it off the event loop: the CLI runs its own)."""
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, list(args), env={**env, "COLUMNS": str(columns)})
    finally:
        get_settings.cache_clear()
    lines = ANSI.sub("", result.output).splitlines()
    return result.exit_code, "\n".join(line for line in lines if not LOG_LINE.match(line))


def quoted_commands(text: str) -> Iterator[str]:
    """Every `amelia …` quoted in `text`, as written after `amelia`."""
    for match in QUOTED.finditer(text):
        yield (match.group(1) or "").strip()


def _alternatives(word: str) -> list[str]:
    """`ls\\|show` or `up|status|down` → each; brackets of optional parts dropped."""
    return [w.strip("[]") for w in word.replace("\\|", "|").split("|") if w.strip("[]")]


@cache
def _root() -> TyperGroup:
    root: TyperGroup = typer.main.get_command(app)  # type: ignore[assignment]
    return root


def unknown_part(quoted: str) -> str | None:
    """What in `amelia <quoted>` the CLI does not have (a command or an option), if anything."""
    commands: list[TyperCommand | TyperGroup] = [_root()]
    for word in quoted.split():
        groups = [c for c in commands if isinstance(c, TyperGroup)]
        if word in ("…", "..."):  # `amelia runs …`: any of them
            return None
        if groups and not word.startswith(("-", "[")):
            names = _alternatives(word)
            found = [g.commands[n] for g in groups for n in names if n in g.commands]
            if len(found) < len(names):
                return word
            commands = found  # type: ignore[assignment]
            continue
        for option in (w for w in _alternatives(word) if w.startswith("-")):
            flags = {f for c in commands for p in c.params for f in (*p.opts, *p.secondary_opts)}
            if option.split("=")[0] not in flags | {"--help"}:
                return option
    return None


def texts_naming_commands(root: Path) -> Iterator[tuple[Path, str]]:
    """The CLI's source (its messages and help) and the docs a user reads."""
    for path in [*sorted((root / "libs" / "cli").rglob("*.py")), root / "README.md"]:
        yield path, path.read_text()
    for path in sorted((root / "docs").glob("*.md")):
        yield path, path.read_text()
