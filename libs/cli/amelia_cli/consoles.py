"""The CLI's two consoles, one of each for every command: results on stdout, what is said
about them (errors, warnings, progress) on stderr.

stderr folds its lines between words at the terminal's width, and only for a terminal (or a
width set in COLUMNS): piped to a file or read by a script, Rich would cut a one-line error
at 80 columns, so there each message stays one line.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console


def _folds(stream: object) -> bool:
    """Whether lines written to `stream` are read at a width: a terminal's, or COLUMNS'."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or bool(os.environ.get("COLUMNS"))


console = Console()
err = Console(stderr=True, soft_wrap=not _folds(sys.stderr), highlight=False)
