"""A document's indexing state as one short label, shared by `amelia docs ls` and the TUI, so
both say how far indexing has got (the Document's embedded_chunk_count of chunk_count)."""

from __future__ import annotations

import re

_COUNTS = re.compile(r" (at )?\d+/\d+$")


def state_label(state: str, embedded: int, chunks: int, error: str = "") -> str:
    """`ready`, `indexing 84% 6784/8008`, `failed at 6784/8008: why`.

    `state` is the DocumentState name, with or without its `DOCUMENT_STATE_` prefix.
    """
    name = state.removeprefix("DOCUMENT_STATE_").lower() or "unspecified"
    progress = f"{embedded}/{chunks}"
    if name == "indexing":
        percent = 100 * embedded // chunks if chunks else 0
        label = f"indexing {percent}% {progress}"
    elif name == "failed":
        label = f"failed at {progress}"
    else:
        label = name
    return f"{label}: {error}" if error else label


def state_brief(label: str) -> str:
    """A `state_label` without its counts, for a narrow listing: `indexing 84%`, `failed`."""
    return _COUNTS.sub("", label)
