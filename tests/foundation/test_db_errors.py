"""What a caller reads while PostgreSQL is not there: a sentence naming where the service tried
to connect, never a bare Python error (`FileNotFoundError: [Errno 2] No such file or directory`
while PostgreSQL restarts and its socket file is gone). Real asyncpg connections through the
services' own engine (`amelia_common.db.create_engine`), mapped by `amelia_common.errors`."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from amelia_common.db import create_engine
from amelia_common.embedded import free_port
from amelia_common.errors import dependency_unavailable
from amelia_common.settings import Settings


async def _failure(settings: Settings, url: str) -> str:
    engine = create_engine(settings, url)
    try:
        with pytest.raises(Exception) as failed:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    error = dependency_unavailable(failed.value)
    assert error is not None, repr(failed.value)
    return error.message


async def test_a_missing_socket_names_its_path(tmp_path: Path, settings: Settings) -> None:
    """PostgreSQL restarting: the socket file is gone for a moment."""
    message = await _failure(settings, f"postgresql://amelia@/amelia?host={tmp_path}")
    assert message == (
        f"PostgreSQL is unavailable: cannot connect to {tmp_path}/.s.PGSQL.5432 (No such file"
        " or directory: is it running?); try again shortly"
    ), message


async def test_a_refused_port_names_host_and_port(settings: Settings) -> None:
    port = free_port()
    message = await _failure(settings, f"postgresql://amelia@127.0.0.1:{port}/amelia")
    assert message == (
        f"PostgreSQL is unavailable: cannot connect to 127.0.0.1:{port} (Connection refused:"
        " is it running?); try again shortly"
    ), message


async def test_a_connection_closed_under_a_transaction_is_postgres_unavailable(
    settings: Settings,
) -> None:
    """PostgreSQL stopping while a statement of a transaction waited (CI of session 22, an
    eager CreateRun waiting for its thread's row): the connection died under the transaction,
    whose end then said `InterfaceError('cannot call Transaction.__aexit__(): the underlying
    connection is closed')` — an INTERNAL error for the caller instead of UNAVAILABLE."""
    engine = create_engine(settings)
    try:
        with pytest.raises(Exception) as failed:
            async with engine.connect() as connection:
                pg = (await connection.get_raw_connection()).driver_connection
                assert pg is not None
                async with pg.transaction():
                    await pg.execute("SELECT 1")
                    pg.terminate()  # the connection gone, as with a server that went away
    finally:
        await engine.dispose()
    error = dependency_unavailable(failed.value)
    assert error is not None, repr(failed.value)
    assert error.dependency == "PostgreSQL"
    assert "connection is closed" in error.message, error.message
