"""`StreamView`: a run's output, streamed token by token, word-wrapped, for runs of any length.

Textual's `TextArea` re-wraps its whole document on each insert and `Log` does not wrap at all,
so neither keeps up with a long run on a narrow terminal. Here the text is kept as paragraphs
and wrapped greedily into visual lines; appending only ever re-wraps the last visual line (a
greedy wrap never changes earlier lines when text is added at the end), and only the lines on
screen are rendered. A width change re-wraps everything once. While the reader is at the
bottom the view follows the end; scrolled up, it stays where they are.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip


def wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap of one paragraph (no newlines) to `width` cells; long words are cut."""
    if width <= 0:
        return [text]
    lines: list[str] = []
    line = ""
    for word in _words(text):
        # Spaces never start a new line (they may hang past the edge, where nobody sees them).
        if cell_len(line) + cell_len(word) <= width or not word.strip(" "):
            line += word
            continue
        if line.strip():
            lines.append(line.rstrip(" "))
            line = ""
            word = word.lstrip(" ")
        while cell_len(word) > width:
            cut = _cut(word, width)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    lines.append(line)
    return lines


def _words(text: str) -> list[str]:
    """`text` as words with their leading spaces (`"a bc  d"` → `["a", " bc", "  d"]`)."""
    words: list[str] = []
    start = 0
    for index in range(1, len(text) + 1):
        if index == len(text) or (text[index] == " " and text[index - 1] != " "):
            words.append(text[start:index])
            start = index
    return words


def _cut(word: str, width: int) -> int:
    """How many characters of `word` fit in `width` cells (at least one)."""
    used = 0
    for index, char in enumerate(word):
        used += cell_len(char)
        if used > width:
            return max(index, 1)
    return len(word)


class StreamView(ScrollView, can_focus=True):
    """Appendable, wrapped text; `text` is everything written, `marker()` starts a section."""

    # The scrollbar's gutter is kept from the start: the text is wrapped to the width beside it,
    # so a long output's scrollbar appearing does not cover the lines' last cells (QA s26: at
    # 80×24 "tasks" read "task", wrapped at 78 cells and drawn in 76).
    DEFAULT_CSS = """
    StreamView { background: $surface; scrollbar-gutter: stable; }
    """

    def __init__(
        self, placeholder: str = "", *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.placeholder = placeholder
        self.chunks: list[str] = []  # everything appended, for `text`
        # Paragraphs: (text, is_marker). The last one grows as tokens arrive.
        self._paragraphs: list[tuple[str, bool]] = [("", False)]
        self._lines: list[tuple[str, bool]] = [("", False)]
        self._last_start = 0  # index in _lines of the last paragraph's last visual line
        self._wrapped_at = 0
        # Following the end until the reader scrolls up; back at the bottom, following again.
        self.following = True

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def clear(self) -> None:
        self.chunks.clear()
        self._paragraphs = [("", False)]
        self._lines = [("", False)]
        self._last_start = 0
        self.following = True
        self._changed()

    def append(self, text: str) -> None:
        if not text:
            return
        self.chunks.append(text)
        parts = text.replace("\t", "    ").replace("\r", "").split("\n")
        self._extend_last(parts[0])
        for part in parts[1:]:
            self._paragraphs.append(("", False))
            self._lines.append(("", False))
            self._last_start = len(self._lines) - 1
            self._extend_last(part)
        self._changed()

    def marker(self, label: str) -> None:
        """A labelled rule (e.g. the node whose tokens follow) on a line of its own."""
        if self._paragraphs[-1][0] == "":
            self._paragraphs.pop()
            del self._lines[self._last_start :]
        rule = f"── {label} ──"
        self._paragraphs += [(rule, True), ("", False)]
        # Wrapped as any text is (a long one, "picked up again after an interruption — it
        # continues from its last checkpoint", was cut at 80 columns).
        self._lines += [(line, True) for line in wrap(rule, self._width())] + [("", False)]
        self._last_start = len(self._lines) - 1
        self._changed()

    def _extend_last(self, piece: str) -> None:
        if not piece:
            return
        text, _ = self._paragraphs[-1]
        self._paragraphs[-1] = (text + piece, False)
        # Re-wrap from the last visual line: the lines before it cannot change.
        last_line = self._lines[self._last_start][0]
        del self._lines[self._last_start :]
        self._lines += [(line, False) for line in wrap(last_line + piece, self._width())]
        self._last_start = len(self._lines) - 1

    def _width(self) -> int:
        return max(self.scrollable_content_region.width, 20)

    def _rewrap(self) -> None:
        width = self._width()
        self._lines = []
        for text, is_marker in self._paragraphs:
            self._lines += [(t, is_marker) for t in wrap(text, width)]
        self._last_start = len(self._lines) - 1
        self._wrapped_at = width

    def _changed(self) -> None:
        self.virtual_size = Size(self._width(), len(self._lines))
        self.refresh()
        # Whatever changed the room the text has (a scrollbar shown or hidden, a resize
        # not yet seen), the lines are wrapped again to it once laid out.
        self.call_after_refresh(self._fit_width)
        if self.following:
            # After the layout took the new size in, so the end is the new end.
            self.call_after_refresh(self.scroll_end, animate=False, immediate=True)

    def _fit_width(self) -> None:
        if self.is_mounted and self.size.width and self._width() != self._wrapped_at:
            self._rewrap()
            self.virtual_size = Size(self._width(), len(self._lines))
            self.refresh()
            if self.following:
                self.call_after_refresh(self.scroll_end, animate=False, immediate=True)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self.following = new >= self.max_scroll_y

    def on_resize(self) -> None:
        if self._width() != self._wrapped_at:
            self._rewrap()
            self._changed()

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        index = self.scroll_offset.y + y
        base = self.rich_style
        if not self.chunks and self.placeholder and index == 0 and len(self._lines) <= 1:
            return Strip([Segment(self.placeholder, base + Style(dim=True))]).extend_cell_length(
                width, base
            )
        if index >= len(self._lines):
            return Strip.blank(width, base)
        text, is_marker = self._lines[index]
        style = base + Style(bold=True, dim=True) if is_marker else base
        return Strip([Segment(text, style)]).crop_extend(0, width, base)
