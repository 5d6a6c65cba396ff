"""PostgreSQL for services that own tables: one async engine, sessions, and migrations.

Each service owns its tables and its own Alembic history (its own version table), applied at
start under an advisory lock so replicas starting together migrate once.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from amelia_common.logging import get_logger
from amelia_common.settings import Settings

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

log = get_logger("amelia.db")


def asyncpg_url(url: str) -> str:
    """`DATABASE_URL` in the form SQLAlchemy's asyncpg dialect wants."""
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://") :]
    return url


def libpq_url(url: str) -> str:
    """`DATABASE_URL` in plain libpq form (psycopg, psql)."""
    if url.startswith("postgresql+asyncpg://"):
        return "postgresql://" + url[len("postgresql+asyncpg://") :]
    return url


# The widest integer a checkpoint's msgpack (and a signed BIGINT) holds.
_INT64 = 2**63


def _json_number(text: str) -> int | float:
    """A JSON integer read back from JSONB: as an int while it fits 64 bits, else as the double
    it came from. Every number in our JSONB came from a google.protobuf.Value (a double), and
    PostgreSQL writes a double's `1e30` back as `1000000000000000000000000000000`: read as an
    int, a run's input then failed its first checkpoint, `TypeError: Integer exceeds 64-bit
    range` (msgpack), after CreateRun had accepted it (QA s22)."""
    number = int(text)
    return number if -_INT64 <= number < _INT64 else float(number)


def read_json(text: str | bytes) -> Any:
    """JSONB's text as Python values (`_json_number` for its integers)."""
    return json.loads(text, parse_int=_json_number)


def create_engine(settings: Settings, url: str | None = None, held: int = 0) -> AsyncEngine:
    """The service's engine: a bounded pool that replaces connections PostgreSQL closed.

    `held`: connections callers hold for long (an agents worker loop's run lock), kept on top of
    DATABASE_POOL_SIZE (`amelia_common.connections`).

    No ping per checkout (it cost BEGIN, `;`, ROLLBACK: three round trips each time): a
    connection the server closed (a restart) is known to asyncpg as closed as soon as the server
    says goodbye, and is replaced at checkout (`_replace_closed`). A statement that meets a
    connection dying under it fails (UNAVAILABLE naming PostgreSQL) and invalidates the whole
    pool (SQLAlchemy's disconnect handling), so the next checkout connects afresh.

    A frozen PostgreSQL (SIGSTOP, a stalled host) keeps its connections up and answers nothing:
    a new connection gives up after DATABASE_CONNECT_TIMEOUT_SECONDS and a checkout waiting for
    a busy pool after DATABASE_POOL_TIMEOUT_SECONDS, both UNAVAILABLE naming PostgreSQL
    (`errors.dependency_unavailable`). A statement already sent waits for its caller's deadline;
    cancelled there, it makes every pooled connection suspect (`_suspect_the_pool`), so the calls
    after it connect afresh, and time out, instead of each waiting on an idle frozen one.
    """
    engine = create_async_engine(
        asyncpg_url(url or settings.DATABASE_URL),
        pool_size=settings.DATABASE_POOL_SIZE + held,
        max_overflow=settings.DATABASE_MAX_OVERFLOW,
        pool_timeout=settings.DATABASE_POOL_TIMEOUT_SECONDS,
        connect_args={"timeout": settings.DATABASE_CONNECT_TIMEOUT_SECONDS},
        pool_recycle=1800,
        json_deserializer=read_json,
    )
    event.listen(engine.sync_engine.pool, "checkout", _replace_closed)
    event.listen(engine.sync_engine, "handle_error", _suspect_the_pool)
    return engine


def _suspect_the_pool(context: ExceptionContext) -> None:
    """A statement cancelled mid-way (its caller's deadline, mostly): replace every pooled
    connection at its next checkout, not only this one (SQLAlchemy's choice for a cancellation).

    The connections of a frozen PostgreSQL look idle and healthy in the pool: without this, each
    next call took one and waited for its own deadline. The cost when PostgreSQL is fine: one
    reconnect per pooled connection after a cancelled statement."""
    if isinstance(context.original_exception, asyncio.CancelledError):
        context.invalidate_pool_on_disconnect = True


def _replace_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Pool checkout: refuse a connection asyncpg saw closed, without a round trip (the pool
    then opens another)."""
    is_closed = getattr(dbapi_connection.driver_connection, "is_closed", None)  # asyncpg's
    if is_closed is not None and is_closed():
        raise DisconnectionError("PostgreSQL closed this pooled connection")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A session whose work commits on success and rolls back on any exception."""
    async with sessions() as session, session.begin():
        yield session


async def select_one(engine: AsyncEngine) -> None:
    """`SELECT 1` alone, in autocommit (no BEGIN/ROLLBACK around it): PostgreSQL's error unless
    it answers now."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("SELECT 1"))


def db_health(engine: AsyncEngine) -> Callable[[], Awaitable[bool]]:
    """A health probe for `GrpcService.dependencies`."""

    async def probe() -> bool:
        await select_one(engine)
        return True

    return probe


class SchemaNewerError(RuntimeError):
    """The database was migrated by a newer Amelia than this one: refused at start, untouched
    (Alembic would say only "Can't locate revision"; a downgrade is not supported)."""


def check_known_revisions(
    sync_conn: Connection, script: ScriptDirectory, version_table: str
) -> None:
    """SchemaNewerError when `version_table` names a revision `script` (this code's
    migrations) does not have, saying what happened and what to do."""
    from alembic.runtime.migration import MigrationContext

    stored = MigrationContext.configure(
        sync_conn, opts={"version_table": version_table}
    ).get_current_heads()
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = [revision for revision in stored if revision not in known]
    if unknown:
        raise SchemaNewerError(
            f"the database's {version_table} is at revision {', '.join(unknown)}, which this "
            f"version of Amelia does not know (its newest is {script.get_current_head()}): a "
            "newer Amelia migrated it. Start that newer version again; Amelia does not migrate "
            "a database back (to go back, restore a backup taken before the upgrade)"
        )


_migration_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}


def _migration_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    return _migration_locks.setdefault(loop, asyncio.Lock())


async def run_migrations(
    engine: AsyncEngine,
    script_location: Path,
    version_table: str,
    attributes: Mapping[str, object] | None = None,
) -> None:
    """Upgrade the service's tables to head, once across replicas (advisory lock); a database
    a newer Amelia migrated is refused (SchemaNewerError), left as it is.

    `attributes` reach the migrations as `context.config.attributes` (e.g. the embedding
    dimension a `vector(n)` column is created with).
    """
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    lock_key = zlib.crc32(version_table.encode()) & 0x7FFFFFFF

    def upgrade(sync_conn: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(script_location))
        cfg.attributes["connection"] = sync_conn
        cfg.attributes["version_table"] = version_table
        cfg.attributes.update(attributes or {})
        check_known_revisions(sync_conn, ScriptDirectory.from_config(cfg), version_table)
        command.upgrade(cfg, "head")

    # Alembic keeps its migration context in module globals, so two migrations in one process
    # must take turns; the advisory lock does the same across processes.
    async with _migration_lock(), engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key})
        try:
            await conn.run_sync(upgrade)
            await conn.commit()
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key})
            await conn.commit()
    log.info("migrations applied", version_table=version_table)


async def wait_for_database(engine: AsyncEngine, timeout: float = 60.0) -> None:
    """Wait until PostgreSQL answers, so a service can start before its database."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await select_one(engine)
            return
        except Exception as exc:
            if asyncio.get_running_loop().time() >= deadline:
                raise ConnectionError(f"cannot reach PostgreSQL: {exc}") from exc
            log.warning("waiting for PostgreSQL", error=str(exc))
            await asyncio.sleep(1.0)
