"""The CLI's two consoles, one of each for every command: results on stdout, what is said
about them (errors, warnings, progress) on stderr.

stderr folds its lines between words at the terminal's width, and only for a terminal (or a
width set in COLUMNS): piped to a file or read by a script, Rich would cut a one-line error
at 80 columns, so there each message stays one line.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console


def _folds(stream: Any) -> bool:
    """Whether lines written to `stream` are read at a width: a terminal's, or COLUMNS'."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or bool(os.environ.get("COLUMNS"))


class _Said(Console):
    """stderr, its lines unwrapped unless `_folds`, decided at each print: where stderr goes
    (and COLUMNS) can change after import, as under a test's runner."""

    @property
    def soft_wrap(self) -> bool:
        return not _folds(self.file)

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        """Console's own setting is ignored: the stream decides."""


console = Console()
err = _Said(stderr=True, highlight=False)
