"""Help text that flows: a docstring's line breaks are where its source wrapped, not where the
terminal should.

Typer's rich help keeps the single newlines of a command's docstring in the command list (and
in every paragraph after the first), so `amelia --help` broke sentences mid-line; and typer 0.29
shows a value type beside a flag (`<bool>`, even for `--help`), which takes none. Every `amelia`
command and group is made by `App` with the classes here: each reflows its help when it is made
(a paragraph that starts with click's `\\b` marker keeps its lines), and its `format_help` —
click's place for a command to shape its own help — gives flags an empty metavar (what typer
shows instead of the type) before typer renders it. All public typer/click API: no patching.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType


def flowing(text: str) -> str:
    """Each paragraph on one line, except those marked `\\b` (kept as written)."""
    paragraphs = text.split("\n\n")
    return "\n\n".join(
        p if p.lstrip().startswith("\b") else " ".join(p.split()) for p in paragraphs
    )


def _untyped_flags(command: TyperCommand | TyperGroup, ctx: Any) -> None:
    """A flag takes no value: show no type beside it (typer shows a metavar instead, if any)."""
    for param in command.get_params(ctx):  # the --help option too, made for the context
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


# typer 0.29 renders help with its own copy of click (typer._click, a private module): its
# Context and HelpFormatter have no public name, so format_help takes them as Any.


class _FlowingHelp:
    """Mixed in before TyperCommand or TyperGroup (whose methods `super()` reaches)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        command = cast("TyperCommand | TyperGroup", self)
        command.help = flowing(command.help) if command.help else command.help

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untyped_flags(cast("TyperCommand | TyperGroup", self), ctx)
        super().format_help(ctx, formatter)  # type: ignore[misc]


class FlowingHelpCommand(_FlowingHelp, TyperCommand):
    """An `amelia` command whose `--help` flows to the terminal's width."""


class FlowingHelpGroup(_FlowingHelp, TyperGroup):
    """An `amelia` command group whose `--help` flows to the terminal's width."""


class App(typer.Typer):
    """`typer.Typer` whose groups and commands are the flowing-help ones unless told otherwise."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", FlowingHelpGroup)
        super().__init__(**kwargs)

    def command(
        self, name: str | None = None, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        kwargs.setdefault("cls", FlowingHelpCommand)
        return super().command(name, **kwargs)
