"""Paging every List RPC follows (AIP-158): the page-size rule (0 means the default, larger values
are capped, a negative one is the caller's mistake) and opaque keyset page tokens."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from amelia_common.errors import InvalidArgumentError

BAD_TOKEN = (
    "page_token is not one this service returned: pass a previous response's next_page_token"
)


def page_size(requested: int, default: int, maximum: int = 1000) -> int:
    """The page size to use; `InvalidArgumentError` with a message for the caller when negative."""
    if requested < 0:
        raise InvalidArgumentError(
            f"page_size must be 0 (the default, {default}) or positive; got {requested}"
        )
    return min(requested or default, maximum)


def encode_keyset(time: datetime, row_id: str) -> str:
    """An opaque page token holding the keyset `(time, id)` of a page's last row."""
    raw = json.dumps([time.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_keyset(token: str) -> tuple[datetime, str]:
    """The `(time, id)` an `encode_keyset` token holds; `errors.InvalidArgumentError` for anything
    else (a token of another list, edited, truncated or made up)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        when, row_id = json.loads(raw)
        time = datetime.fromisoformat(when)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidArgumentError(BAD_TOKEN) from exc
    if time.tzinfo is None or not isinstance(row_id, str):
        raise InvalidArgumentError(BAD_TOKEN)
    return time, row_id
