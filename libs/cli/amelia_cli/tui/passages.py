"""A passage with its source, the same for search hits (proto JSON, camelCase) and the passages
a run retrieved (`run.retrieval` data, snake_case); and how a passage's text is laid out, the
same for `amelia search` and the TUI: prose flowing, code and Markdown blocks with their lines."""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text


def _pick(hit: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = hit.get(name)
        if value not in (None, "", []):
            return value
    return None


def passage_text(number: int, hit: dict[str, Any], *, limit: int = 600) -> Text:
    """`[1] zebras.md › Zebra migration · chars 0–300 · score 0.712` and the passage under it."""
    title = _pick(hit, "documentTitle", "document_title", "title")
    title = title or str(_pick(hit, "document") or "untitled").rsplit("/", 1)[-1]
    where: list[str] = []
    headings = _pick(hit, "headingPath", "heading_path")
    if isinstance(headings, list):
        where.append(" › ".join(str(h) for h in headings))
    if _pick(hit, "page"):
        where.append(f"page {int(hit['page'])}")
    end = _pick(hit, "endOffset", "end_offset")
    if end is not None:
        # Proto JSON leaves out a zero start offset.
        where.append(f"chars {int(_pick(hit, 'startOffset', 'start_offset') or 0)}–{int(end)}")
    score = _pick(hit, "score")
    if score is not None:
        where.append(f"score {float(score):.3f}")
    content = passage_layout(
        str(_pick(hit, "content", "text") or ""), _pick(hit, "documentType", "document_type")
    )
    if len(content) > limit:
        content = content[: limit - 1] + "…"
    return Text.assemble(
        (f"[{number}] ", "bold"),
        (str(title), "bold cyan"),
        (f" · {' · '.join(where)}" if where else "", "dim"),
        "\n",
        (content, ""),
    )


# Document types (proto JSON names, or their numbers) whose text is Markdown or plain prose, and
# code, whose lines are its meaning.
_PROSE_TYPES = {"DOCUMENT_TYPE_MARKDOWN", "DOCUMENT_TYPE_TEXT", 2, 3}
_CODE_TYPES = {"DOCUMENT_TYPE_CODE", 5}


def passage_layout(content: str, document_type: Any = None) -> str:
    """A passage's text as it is shown: code (a C file) line by line as it is; Markdown and text
    flowing (`prose_flowing`); anything else (PDF, HTML: line breaks of a page layout) as one
    paragraph. The TUI squeezed every passage into one paragraph, code too."""
    if document_type in _CODE_TYPES:
        return "\n".join(line.rstrip() for line in content.strip("\n").split("\n"))
    if document_type in _PROSE_TYPES:
        return prose_flowing(content.strip())
    return " ".join(content.split())


# A line that starts a block of its own in Markdown: a list item, quote, table row, heading or
# fence (indented or not: a nested list's item); a `•` item too (text and PDF lists).
_BLOCK = re.compile(r"^\s*([-*+>|#•]|\d+[.)]\s|```|~~~)")


def _indented(line: str) -> bool:
    return line.startswith(("    ", "\t"))


def prose_flowing(text: str) -> str:
    """A passage's prose without its source's line breaks (a file wrapped at 100 columns, shown
    on 80, alternated long and short lines), so the terminal wraps it; lists, tables, headings
    and code keep their lines, and a list item's continuation joins the item, however deep it
    is indented (a nested item's continuation, 4+ spaces in, was taken for code and kept its
    line break mid-phrase). As in CommonMark, an indented line is code only after a blank line
    or another code line: it cannot interrupt a paragraph or a list item."""
    lines: list[str] = []
    fenced = False
    code = False  # the line is an indented code block's
    for line in text.split("\n"):
        fence = line.lstrip().startswith(("```", "~~~"))
        previous = lines[-1] if lines else ""
        after_code = code
        code = not fenced and _indented(line) and (code or not previous.strip())
        if (
            not fenced
            and not fence
            and not code
            and not after_code
            and line.strip()
            and previous.strip()
            and not _BLOCK.match(line)
            and not previous.lstrip().startswith(("#", "|", "```", "~~~"))
            and not previous.endswith("  ")  # a Markdown hard break
        ):
            lines[-1] = f"{previous.rstrip()} {line.strip()}"
        else:
            lines.append(line)
        fenced ^= fence
    return "\n".join(lines)
