"""A passage with its source, the same for search hits (proto JSON, camelCase) and the passages
a run retrieved (`run.retrieval` data, snake_case)."""

from __future__ import annotations

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
    content = " ".join(str(_pick(hit, "content", "text") or "").split())
    if len(content) > limit:
        content = content[: limit - 1] + "…"
    return Text.assemble(
        (f"[{number}] ", "bold"),
        (str(title), "bold cyan"),
        (f" · {' · '.join(where)}" if where else "", "dim"),
        "\n",
        (content, ""),
    )
