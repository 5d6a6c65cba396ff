"""Keyset pages of the agents' List RPCs: `(create_time, id)` of the last row in the shared,
opaque page token (`amelia_common.paging`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from amelia_common import paging
from amelia_common.errors import InvalidArgumentError

Row = TypeVar("Row")

encode = paging.encode_keyset
decode = paging.decode_keyset


def page_size(requested: int) -> int:
    return paging.page_size(requested, default=50)


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
        raise InvalidArgumentError(paging.BAD_TOKEN)
    return int(value)
