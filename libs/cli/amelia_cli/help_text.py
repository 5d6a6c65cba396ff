"""Help text that flows: a docstring's line breaks are where its source wrapped, not where the
terminal should.

Typer's rich help keeps the single newlines of a command's docstring in the command list (and
in every paragraph after the first), so `amelia --help` broke sentences mid-line. A flag's
help shows no value type (`<bool>`: it takes none). The root group
reflows the help of every command under it once, when the CLI is built; a paragraph that starts
with click's `\\b` marker keeps its lines.
"""

from __future__ import annotations

from typing import Any

from typer import _click
from typer.core import TyperCommand, TyperGroup, TyperOption

_type_of = TyperOption.display_type_rich


def _flag_without_type(self: TyperOption, ctx: _click.Context) -> str | None:
    """A flag takes no value: typer 0.29 still shows `<bool>` beside it (even `--help`)."""
    return None if self.is_flag else _type_of(self, ctx)


TyperOption.display_type_rich = _flag_without_type  # type: ignore[method-assign]


def flowing(text: str) -> str:
    """Each paragraph on one line, except those marked `\\b` (kept as written)."""
    paragraphs = text.split("\n\n")
    return "\n\n".join(
        p if p.lstrip().startswith("\b") else " ".join(p.split()) for p in paragraphs
    )


def reflow(command: TyperCommand | TyperGroup) -> None:
    """Reflow the help of `command` and of every command under it (typer builds them on its
    own copy of click: TyperCommand and TyperGroup are what it makes)."""
    if command.help:
        command.help = flowing(command.help)
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            if isinstance(sub, TyperCommand | TyperGroup):
                reflow(sub)


class FlowingHelpGroup(TyperGroup):
    """The root group: every command's help flows to the terminal's width."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reflow(self)
