"""Splitting parsed text into overlapping chunks whose offsets are exact.

A chunk is always `text[start:end]` of the parsed text: it starts at the beginning of a word and
ends at the end of one, so no word is ever cut (except a "word" longer than a whole chunk, such
as a minified line or a base64 blob, which is cut into chunk-sized pieces). Chunks stay inside a
section (a heading's body, a page, a definition).

Where a chunk ends is chosen recursively by boundary strength: the strongest boundary that
keeps the chunk at least half full wins, so a chunk ends at a paragraph break when there is
one, else at a sentence end, else at a line break, else between two words. The next chunk
starts inside the last `overlap` characters of the previous one, at a sentence or paragraph
start when the overlap window holds one, else at the earliest word that fits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from amelia_rag.parsing import ParsedDocument, Section

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?…。！？][)\]\"'»”’]*$")
_SENTENCE_STOP = re.compile(r"[.!?…。！？][)\]\"'»”’]*(?=\s)")

# Boundary strengths, weakest first. A cut inside an over-long token is weaker than any gap.
_CUT = -1
_SPACE = 0
_LINE = 1
_SENTENCE = 2
_PARAGRAPH = 3
_END = 9

# A chunk may end at a stronger boundary only if it stays at least this full.
MIN_FILL = 0.5
# What all-MiniLM-L6-v2 reads whole: 256 word pieces, about 1,000 characters of English prose
# but 500–700 of code, SQL or identifiers, with the heading path in front. Longer chunks would
# be cut off silently when embedded.
MODEL_CHUNK_CHARS = 500
# A passage window may move its ends this much (share of its size) to land on a boundary.
SNAP_SHARE = 0.2
# What passages are made of; part of a document's index signature, so a change re-chunks.
# 2: a section shorter than a passage reads on into the whole sections after it.
# 3: … and into the opening of the first one that does not fit whole.
PASSAGE_VERSION = 3


@dataclass(frozen=True)
class Chunk:
    """A passage: `text == parsed.text[start:end]`, inside one section."""

    index: int
    start: int
    end: int
    text: str
    heading_path: tuple[str, ...]
    page: int
    meta: dict[str, Any]
    section: int = 0
    # The passage returned for this chunk: `text[passage_start:passage_end]`, around the chunk.
    passage_start: int = 0
    passage_end: int = 0


def _words(text: str, start: int, end: int, size: int) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for match in _WORD.finditer(text, start, end):
        s, e = match.span()
        while e - s > size:
            spans.append((s, s + size))
            s += size
        spans.append((s, e))
    return spans


def _strengths(text: str, words: list[tuple[int, int]]) -> list[int]:
    """strength[i] is the strength of the boundary right after word i."""
    out: list[int] = []
    for i, (s, e) in enumerate(words):
        if i + 1 == len(words):
            out.append(_END)
            continue
        gap = text[e : words[i + 1][0]]
        if not gap:
            out.append(_CUT)
            continue
        newlines = gap.count("\n")
        if newlines >= 2:
            out.append(_PARAGRAPH)
        elif _SENTENCE_END.search(text, s, e):
            out.append(_SENTENCE)
        elif newlines == 1:
            out.append(_LINE)
        else:
            out.append(_SPACE)
    return out


def split_spans(text: str, start: int, end: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) offsets of the chunks of `text[start:end]`."""
    if size <= 0:
        raise ValueError("chunk size must be positive")
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and less than the chunk size")
    words = _words(text, start, end, size)
    if not words:
        return []
    strength = _strengths(text, words)
    n = len(words)
    spans: list[tuple[int, int]] = []
    i = 0
    last = -1  # index of the word the previous chunk ended with
    while i < n:
        s = words[i][0]
        j = i
        while j + 1 < n and words[j + 1][1] - s <= size:
            j += 1
        if j == n - 1:
            spans.append((s, words[j][1]))
            break
        best = j
        for k in range(j - 1, max(i, last + 1) - 1, -1):
            if words[k][1] - s < size * MIN_FILL:
                break
            if strength[k] > strength[best]:
                best = k
        e = words[best][1]
        spans.append((s, e))
        i = _next_start(words, strength, i, best, e, size, overlap)
        last = best
    return spans


def _next_start(
    words: list[tuple[int, int]],
    strength: list[int],
    i: int,
    best: int,
    end: int,
    size: int,
    overlap: int,
) -> int:
    """The first word of the next chunk: inside the overlap window, and leaving room to advance."""
    following = best + 1
    if overlap == 0:
        return following
    window = [k for k in range(i + 1, best + 1) if end - words[k][0] <= overlap]
    # The next chunk must reach past this one's end, so its first word cannot be too early.
    window = [k for k in window if words[following][1] - words[k][0] <= size]
    if not window:
        return following
    strong = [k for k in window if strength[k - 1] >= _SENTENCE]
    return strong[0] if strong else window[0]


def child_size(chunk_size: int, chunk_overlap: int) -> tuple[int, int]:
    """Size and overlap of the embedded chunks: CHUNK_SIZE, but no more than the model reads."""
    size = min(chunk_size, MODEL_CHUNK_CHARS)
    return size, min(chunk_overlap, size // 4)


def _snap_start(text: str, start: int, low: int, slack: int) -> int:
    """`start` moved to the paragraph, sentence or word start at or after it (within slack)."""
    window = text[start : start + slack]
    for pattern in (r"\n\s*\n", r"[.!?:]\s+(?=[A-Z0-9`(\"'])", r"\n", r"\s"):
        found = re.search(pattern, window)
        if found:
            return start + found.end()
    return max(low, start)


def _snap_end(text: str, end: int, high: int, slack: int) -> int:
    """`end` moved back to the paragraph, sentence or word end at or before it (within slack)."""
    lo = max(0, end - slack)
    window = text[lo:end]
    for pattern in (r"\n\s*\n", r"[.!?:](?=\s)", r"\n", r"\s"):
        found = list(re.finditer(pattern, window))
        if found:
            last = found[-1]
            return lo + (last.start() if last.group().isspace() else last.end())
    return min(high, end)


def passage_window(
    text: str, section: tuple[int, int], chunk: tuple[int, int], size: int
) -> tuple[int, int]:
    """The passage for a chunk: its section if ≤ size, else ≈ size characters centred on it."""
    s_start, s_end = section
    c_start, c_end = chunk
    if s_end - s_start <= size:
        start, end = s_start, s_end
    elif c_end - c_start >= size:
        start, end = c_start, c_end
    else:
        centre = (c_start + c_end) // 2
        start = max(s_start, centre - size // 2)
        end = min(s_end, start + size)
        start = max(s_start, end - size)
        slack = int(size * SNAP_SHARE)
        if start > s_start:
            start = min(_snap_start(text, start, s_start, slack), c_start)
        if end < s_end:
            end = max(_snap_end(text, end, s_end, slack), c_end)
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def reach(text: str, sections: list[Section], number: int, size: int) -> int:
    """Where a passage starting at section `number` may end: it reads on through the sections
    after it (on the same page) while it stays within `size`, into the first one that does not
    fit whole up to its last paragraph or sentence end that does — at least the section's own end.

    A page title, a Synopsis or a one-line heading body is a few words; what a reader wants
    from a hit on it is what follows (the Description under the title), and a passage of a few
    words was, on eval/'s manual pages, the hit that pushed the answering section down. When
    the Description is longer than what is left, its opening is what the reader wants (before,
    the passage stopped at the title: pg_basebackup's title hit read "pg_basebackup — take a base
    backup…" and nothing more).
    """
    first = sections[number]
    end = first.end
    for following in range(number + 1, len(sections)):
        section = sections[following]
        if section.page != first.page:
            break
        if section.end - first.start > size:
            sentences = list(_SENTENCE_STOP.finditer(text, section.start, first.start + size))
            if sentences:
                end = sentences[-1].end()
            break
        end = section.end
    return end


def chunk_document(
    parsed: ParsedDocument, size: int, overlap: int, *, passage_size: int = 0
) -> list[Chunk]:
    """Every section's chunks, numbered in document order, each with its passage window.

    `passage_size` 0 makes each chunk its own passage.
    """
    chunks: list[Chunk] = []
    for number, section in enumerate(parsed.sections):
        bounds = (section.start, section.end)
        if passage_size and section.end - section.start < passage_size:
            bounds = (section.start, reach(parsed.text, parsed.sections, number, passage_size))
        for s, e in split_spans(parsed.text, section.start, section.end, size, overlap):
            p_start, p_end = (
                passage_window(parsed.text, bounds, (s, e), passage_size)
                if passage_size
                else (s, e)
            )
            chunks.append(
                Chunk(
                    index=len(chunks),
                    start=s,
                    end=e,
                    text=parsed.text[s:e],
                    heading_path=section.heading_path,
                    page=section.page,
                    meta=dict(parsed.meta) if parsed.type == "code" else {},
                    section=number,
                    passage_start=p_start,
                    passage_end=p_end,
                )
            )
    return chunks


def embedding_text(title: str, chunk: Chunk) -> str:
    """What is embedded for a chunk: where it is (title, headings) and then its text."""
    return context_text(title, chunk.heading_path, chunk.page, chunk.text)


def context_text(title: str, heading_path: tuple[str, ...], page: int, text: str) -> str:
    """Title and heading path, then the passage: the text embedded for a chunk.

    The heading context makes a passage findable by the question its section answers; the
    stored passage stays the exact source slice.
    """
    context = [title] if title and (not heading_path or heading_path[0] != title) else []
    context.extend(heading_path)
    if page:
        context.append(f"page {page}")
    prefix = " > ".join(c for c in context if c)
    return f"{prefix}\n\n{text}" if prefix else text
