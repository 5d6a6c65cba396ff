"""Statements sent straight to asyncpg, on a connection of the engine's pool.

On a run's path SQLAlchemy's work around a statement — compiling it (or its cache key),
processing parameters and building result rows — cost about 140 µs of CPU per statement
(session 14, docs/performance.md), several times asyncpg's own; a run makes several. The run
lock (`locks`) and the run's reads and transitions (`store`) therefore send their statements to
the asyncpg connection under a pooled SQLAlchemy connection: the pool (its size, its checkout
that replaces connections PostgreSQL closed) stays the engine's, and no transaction is begun
(SQLAlchemy begins one only for statements it runs itself): each statement commits on its own.

`DriverStatement` keeps SQLAlchemy as the way statements are written: one built with named
`bindparam`s is compiled once for asyncpg, and run with a dict of its parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
from sqlalchemy import JSON
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_DIALECT = asyncpg_dialect()

# After these a connection's state is not known (a statement cut off, a connection lost): it is
# closed for good, and — as SQLAlchemy does for its own statements (`amelia_common.db`) — every
# pooled connection is replaced at its next checkout (a frozen server's look idle and healthy).
_IN_DOUBT = (
    asyncio.CancelledError,
    asyncpg.InterfaceError,  # among them ConnectionDoesNotExistError: lost mid-statement
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # among them admin_shutdown: PostgreSQL stopping
    ConnectionError,
)


async def driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn`, outside any transaction (SQLAlchemy begins one only
    for its own statements): each statement sent to it commits on its own."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def discard(conn: AsyncConnection) -> None:
    """Close the connection for good (not back to the pool): whatever it holds dies with it."""
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()


@contextlib.asynccontextmanager
async def connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled connection's asyncpg connection, for a few statements: back to the pool after
    (also after PostgreSQL refused a statement: the connection is fine); discarded when it is in
    doubt or left in a transaction, the pool suspected too when it is in doubt (see `_IN_DOUBT`)."""
    conn = await engine.connect()
    pg = None
    try:
        pg = await driver(conn)
        yield pg
    except BaseException as exc:
        if pg is None:
            await discard(conn)
        elif isinstance(exc, _IN_DOUBT):
            await _suspect_the_pool(engine, conn)
        elif pg.is_closed() or pg.is_in_transaction():
            await discard(conn)
        else:
            await conn.close()
        raise
    await conn.close()


async def _suspect_the_pool(engine: AsyncEngine, conn: AsyncConnection) -> None:
    """Every connection of the pool made until now is replaced at its next checkout, this one
    closed for good: what SQLAlchemy's disconnect handling does (`Pool._invalidate`)."""
    with contextlib.suppress(Exception):
        engine.sync_engine.pool._invalidate(await conn.get_raw_connection(), _checkin=False)
    await discard(conn)


class DriverStatement:
    """A SQLAlchemy statement with named parameters, compiled once for asyncpg: `sql` ($1, $2,
    …) and `args(params)` in that order, JSON values serialized as the engine's JSON type does
    (None is JSON null there too). Values bound in the statement itself are its defaults."""

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        binds = compiled.binds
        self.defaults = {name: binds[name].effective_value for name in self.names}
        self.json = frozenset(name for name in self.names if isinstance(binds[name].type, JSON))

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        values = {**self.defaults, **params}
        return [
            json.dumps(values[name]) if name in self.json else values[name] for name in self.names
        ]

    async def fetchrow(self, pg: Any, params: Mapping[str, Any]) -> Any:
        return await pg.fetchrow(self.sql, *self.args(params))

    async def fetchval(self, pg: Any, params: Mapping[str, Any]) -> Any:
        return await pg.fetchval(self.sql, *self.args(params))

    async def execute(self, pg: Any, params: Mapping[str, Any]) -> str:
        """The statement's status ("INSERT 0 1", …)."""
        return str(await pg.execute(self.sql, *self.args(params)))
