"""The body of every service's Alembic `env.py`.

A service's `migrations/env.py` is two lines: import its `Base.metadata` and call `run_env`. The
connection and version table come from `amelia_common.db.run_migrations`, so each service keeps
its own history in one shared database.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData


def run_env(target_metadata: MetaData) -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through amelia_common.db.run_migrations")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=config.attributes["version_table"],
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
