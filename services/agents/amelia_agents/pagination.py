"""Keyset page tokens: opaque to clients, `(create_time, id)` of the last row inside."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from amelia_common import paging

Row = TypeVar("Row")


class BadPageTokenError(ValueError):
    pass


def page_size(requested: int) -> int:
    return paging.page_size(requested, default=50)


def encode(create_time: datetime, row_id: str) -> str:
    raw = json.dumps([create_time.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        when, row_id = json.loads(raw)
        return datetime.fromisoformat(when), str(row_id)
    except (ValueError, TypeError) as exc:
        raise BadPageTokenError("page_token is not one this service returned") from exc


def page(rows: Sequence[Row], limit: int, key: str = "create_time") -> tuple[Sequence[Row], str]:
    """The first `limit` of `limit + 1` fetched rows, and the token of the next page ("" at the end).

    Rows have `key` (a time) and `id`, the keyset the store orders by.
    """
    if len(rows) <= limit:
        return rows, ""
    last: Any = rows[limit - 1]
    return rows[:limit], encode(getattr(last, key), str(last.id))


def offset_token(offset: int) -> str:
    """A token for lists read whole and cut (a run's steps): the position of the next item."""
    return encode(datetime.fromtimestamp(0).astimezone(), str(offset)) if offset else ""


def offset_of(token: str) -> int:
    if not token:
        return 0
    _, value = decode(token)
    if not value.isdigit():
        raise BadPageTokenError("page_token is not one this service returned")
    return int(value)
