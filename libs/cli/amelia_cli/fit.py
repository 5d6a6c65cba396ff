"""Long names in narrow tables: cut to a width with an ellipsis, so the columns after them stay
on an 80-column screen (QA s26: a 63-character target pushed Status, Created, Took and Tokens off
the TUI's runs list; one long agent id shrank `amelia agents ls`' Model to 7 characters)."""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len, set_cell_size
from rich.text import Text

ELLIPSIS = "…"


def shorten(text: str, width: int, *, middle: bool = True) -> str:
    """`text` in at most `width` cells: its middle (or, `middle=False`, its end) given up for
    `…`, so a long id keeps its start and its end (`agents/abbb…bbbb`)."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    if not middle:
        return set_cell_size(text, width - 1).rstrip() + ELLIPSIS
    tail = (width - 1) // 2
    head = width - 1 - tail
    start = set_cell_size(text, head)
    # The end: as many last characters as fit in `tail` cells.
    end = ""
    for char in reversed(text):
        if cell_len(end) + cell_len(char) > tail:
            break
        end = char + end
    return start.rstrip() + ELLIPSIS + end


def room_for(total: int, others: list[int], gaps: int) -> int:
    """The cells left to one column of a table `total` wide, beside the `others` columns'
    widths and `gaps` cells of padding and borders."""
    return total - sum(others) - gaps


def cells(value: Any) -> int:
    """The cells a table's cell takes: a string's or a rich `Text`'s."""
    return value.cell_len if isinstance(value, Text) else cell_len(str(value))
