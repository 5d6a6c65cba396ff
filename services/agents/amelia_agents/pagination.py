"""Keyset pages of the agents' List RPCs: `(create_time, id)` of the last row in the shared,
opaque page token (`amelia_common.paging`) — or, for runs listed by duration or tokens, that key's
value and the id. Every token carries its request's scope (`paging.request_scope`: the request's
parameters but its page), so one reused with another order or filter is told so. ListRuns' query
(its fields, filter, order and page) is here too."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from amelia_agents import convert
from amelia_agents.models import RunRow
from amelia_agents.store import RunFilter
from amelia_common import paging
from amelia_common.errors import InvalidArgumentError

Row = TypeVar("Row")
M = TypeVar("M", bound=Message)

encode = paging.encode_keyset
decode = paging.decode_keyset


DEFAULT_PAGE_SIZE = 50
# The time part of tokens that hold something else (an offset, a sort key's value).
_EPOCH = datetime.fromtimestamp(0).astimezone()


def keyset_page(request: Any) -> tuple[int, tuple[datetime, str] | None, str]:
    """A List request's page size, the keyset its token resumes after (None: the start), and
    its scope (`paging.request_scope`, for the next page's token)."""
    scope = paging.request_scope(request)
    token = request.page_token
    after = decode(token, scope) if token else None
    return paging.page_size(request.page_size, DEFAULT_PAGE_SIZE), after, scope


def page(
    rows: Sequence[Row],
    limit: int,
    key: str = "create_time",
    fit: Callable[[Sequence[Row]], int] = len,
    token: Callable[[Row], str] | None = None,
    scope: str = "",
) -> tuple[Sequence[Row], str]:
    """The first `limit` of `limit + 1` fetched rows, and the token of the next page ("" at the end).

    The next page resumes after the last row kept: its `token`, by default the keyset the store
    orders by (its `key`, a time, and its `id`), with the request's `scope`. `fit` may cut the page shorter (how many of the
    first `limit` rows to keep, e.g. `convert.PageFit` by bytes).
    """
    limit = min(limit, fit(rows[:limit]))
    if len(rows) <= limit:
        return rows, ""
    last: Any = rows[limit - 1]
    next_token = token(last) if token else encode(getattr(last, key), str(last.id), scope)
    return rows[:limit], next_token


def offset_page(
    items: Sequence[M], offset: int, limit: int, scope: str = ""
) -> tuple[Sequence[M], str]:
    """A page of a list read whole (a run's steps): up to `limit` items from `offset`, cut by
    bytes like the other List pages (`convert.fitting`), and the token of the next item."""
    window = items[offset : offset + limit]
    kept = window[: convert.fitting(window)]
    end = offset + len(kept)
    return kept, offset_token(end, scope) if end < len(items) else ""


def offset_token(offset: int, scope: str = "") -> str:
    """A token for lists read whole and cut (a run's steps): the position of the next item."""
    return encode(_EPOCH, str(offset), scope) if offset else ""


def offset_of(token: str, scope: str = "") -> int:
    if not token:
        return 0
    _, value = decode(token, scope)
    if not value.isdigit():
        raise InvalidArgumentError(paging.BAD_TOKEN)
    return int(value)


# -- ListRuns: its orders and their keyset pages ------------------------------------------------

# Unfinished runs have no duration: they come last in either direction.
_NO_DURATION_LAST = {True: Decimal(-1), False: Decimal("1e18")}


@dataclass(frozen=True)
class RunOrder:
    """One of `RUN_ORDERS`: the key runs are sorted by (then their id), and which way."""

    key: str
    descending: bool

    def column(self) -> ColumnElement[Any]:
        if self.key == "duration":
            seconds = func.extract("epoch", RunRow.end_time - RunRow.start_time)
            return func.coalesce(seconds, _NO_DURATION_LAST[self.descending])
        if self.key == "usage.total_tokens":
            return RunRow.input_tokens + RunRow.output_tokens
        return RunRow.create_time

    def after(self, token: tuple[datetime, str]) -> ColumnElement[bool]:
        """The rows after the page whose last row's keyset the token holds."""
        value, last = self._decode(token)
        column = self.column()
        if self.descending:
            return or_(column < value, and_(column == value, RunRow.id < last))
        return or_(column > value, and_(column == value, RunRow.id > last))

    def token(self, row: RunRow, value: Any, scope: str) -> str:
        if self.key == "create_time":
            return encode(row.create_time, str(row.id), scope)
        # The key and its exact value ride in the token's id part (the time is unused).
        return encode(_EPOCH, f"{self.key}|{value}|{row.id}", scope)

    def _decode(self, token: tuple[datetime, str]) -> tuple[Any, uuid.UUID]:
        when, rest = token
        try:
            if self.key == "create_time":
                return when, uuid.UUID(rest)
            key, value, last = rest.split("|")
            if key != self.key:
                raise ValueError(key)
            number = int(value) if self.key == "usage.total_tokens" else Decimal(value)
            low, high = _SORT_KEY_RANGE[self.key]
            # Not a value the key ever has (or one PostgreSQL cannot bind): a made-up token.
            if not low <= number <= high or _places(number) > _MAX_PLACES:
                raise ValueError(value)
            return number, uuid.UUID(last)
        except (ValueError, ArithmeticError):
            raise InvalidArgumentError(paging.BAD_TOKEN) from None


# What a token's sort key can hold, as PostgreSQL would bind it: the sum of two bigint token
# counts; a duration's seconds (or its stand-in for unfinished runs, `_NO_DURATION_LAST`). A
# token with another value was not made here, and is refused as such rather than failing the
# query.
_SORT_KEY_RANGE: dict[str, tuple[Any, Any]] = {
    "usage.total_tokens": (-(2**63), 2**63 - 1),
    "duration": (_NO_DURATION_LAST[True], _NO_DURATION_LAST[False]),
}
_MAX_PLACES = 40  # a duration's seconds have 6 decimal places (a double's text, a few more)


def _places(number: int | Decimal) -> int:
    exponent = number.as_tuple().exponent if isinstance(number, Decimal) else 0
    return -exponent if isinstance(exponent, int) else 0


RUN_ORDERS = {
    f"{key}{suffix}": RunOrder(key, suffix == " desc")
    for key in ("create_time", "duration", "usage.total_tokens")
    for suffix in (" desc", "")
}


def run_order(order_by: str) -> RunOrder:
    """ListRuns' `order_by` (default: newest first); InvalidArgumentError naming the choices."""
    found = RUN_ORDERS.get(" ".join(order_by.split()) or "create_time desc")
    if found is None:
        raise InvalidArgumentError(f"order_by must be one of: {', '.join(RUN_ORDERS)}")
    return found


async def list_runs(
    sessions: async_sessionmaker[AsyncSession],
    limit: int,
    after: tuple[datetime, str] | None,
    flt: RunFilter,
    order: RunOrder,
    fit: Callable[[Sequence[RunRow]], int] = len,
    scope: str = "",
) -> tuple[list[RunRow], str]:
    """One page of the runs `flt` keeps, in `order`, and the next page's token (for the
    request's `scope`); `fit` as in `page`."""
    column = order.column()
    query = select(RunRow, column.label("sort_key")).where(*run_conditions(flt))
    if after is not None:
        query = query.where(order.after(after))
    if order.descending:
        query = query.order_by(column.desc(), RunRow.id.desc())
    else:
        query = query.order_by(column, RunRow.id)
    async with sessions() as s:
        found = (await s.execute(query.limit(limit + 1))).all()
    kept, token = page(
        found,
        limit,
        fit=lambda pairs: fit([row for row, _ in pairs]),
        token=lambda pair: order.token(pair[0], pair[1], scope),
    )
    return [row for row, _ in kept], token


def run_conditions(flt: RunFilter) -> list[ColumnElement[bool]]:
    """ListRuns' fields and its compiled `filter`, as conditions all of which hold."""
    conditions = [] if flt.condition is None else [flt.condition]
    if flt.statuses:
        conditions.append(RunRow.status.in_(list(flt.statuses)))
    if flt.agent_id:
        conditions.append(RunRow.agent_id == flt.agent_id)
    if flt.workflow:
        conditions.append(RunRow.workflow == flt.workflow)
    if flt.thread_id:
        conditions.append(RunRow.thread_id == flt.thread_id)
    if flt.created_after:
        conditions.append(RunRow.create_time >= flt.created_after)
    if flt.created_before:
        conditions.append(RunRow.create_time < flt.created_before)
    return conditions
