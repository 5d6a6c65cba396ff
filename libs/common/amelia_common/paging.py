"""The page-size rule every List RPC follows (AIP-158): 0 means the default, larger values are
capped, a negative one is the caller's mistake."""

from __future__ import annotations


def page_size(requested: int, default: int, maximum: int = 1000) -> int:
    """The page size to use; raises `ValueError` with a message for the caller when negative."""
    if requested < 0:
        raise ValueError(
            f"page_size must be 0 (the default, {default}) or positive; got {requested}"
        )
    return min(requested or default, maximum)
