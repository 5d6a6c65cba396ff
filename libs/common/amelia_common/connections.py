"""How many PostgreSQL connections a process may open: the pools are sized from it, the
embedded PostgreSQL's max_connections follows it, and an agents process refuses to start on a
server it cannot fit (docs/scale-out.md has the arithmetic).

An agents process has two pools. Its engine (SQLAlchemy) keeps DATABASE_POOL_SIZE connections
for calls plus one per worker loop (a running run holds its lock on a connection of its own,
`amelia_agents.locks`) and opens up to DATABASE_MAX_OVERFLOW more at busy moments. Its
checkpoint pool (psycopg) has one per loop (a pick-up holds one, `checkpoints.for_pickup`) plus
DATABASE_POOL_SIZE for the API's checkpoint reads. A rag process has an engine only.
"""

from __future__ import annotations

from amelia_common.settings import Settings

# `amelia up --replicas` runs at most this many processes of each service (the CLI's
# MAX_REPLICAS is this): the embedded PostgreSQL takes as many as they may open together.
MESH_REPLICAS_AT_MOST = 8
# Beside the services: `amelia status`, psql, a migration, a bench's own connections.
OTHER_CLIENTS = 10
# The embedded server's max_connections at least (the default mesh at 8 replicas needs 240).
EMBEDDED_MAX_CONNECTIONS_AT_LEAST = 300


class ConnectionBudgetError(RuntimeError):
    """The process's pools can open more connections than PostgreSQL takes."""


def worker_loops(settings: Settings) -> int:
    """The loops whose runs each hold connections: AGENT_WORKERS, at least one (a standalone
    worker runs one with AGENT_WORKERS=0; an API-only process then keeps one spare)."""
    return max(settings.AGENT_WORKERS, 1)


def engine_held(settings: Settings) -> int:
    """Engine connections kept for the run locks, on top of DATABASE_POOL_SIZE."""
    return worker_loops(settings)


def checkpoint_pool_size(settings: Settings) -> int:
    """The checkpoint pool's max_size: one per loop plus DATABASE_POOL_SIZE for the API."""
    return worker_loops(settings) + settings.DATABASE_POOL_SIZE


def agents_connections(settings: Settings) -> int:
    """The most an agents process (or a standalone worker) opens at once."""
    engine = settings.DATABASE_POOL_SIZE + engine_held(settings) + settings.DATABASE_MAX_OVERFLOW
    return engine + checkpoint_pool_size(settings)


def rag_connections(settings: Settings) -> int:
    """The most a rag process opens at once (its engine)."""
    return settings.DATABASE_POOL_SIZE + settings.DATABASE_MAX_OVERFLOW


def mesh_connections(settings: Settings, replicas: int = 1) -> int:
    """The most `replicas` agents and rag processes open together (events and the gateway
    use no PostgreSQL)."""
    return replicas * (agents_connections(settings) + rag_connections(settings))


def embedded_max_connections(settings: Settings) -> int:
    """The embedded server's max_connections: the mesh at `amelia up --replicas` 8, others."""
    needed = mesh_connections(settings, MESH_REPLICAS_AT_MOST) + OTHER_CLIENTS
    return max(EMBEDDED_MAX_CONNECTIONS_AT_LEAST, needed)


def check_fits(settings: Settings, available: int, in_use: int) -> str:
    """Raise ConnectionBudgetError when this agents process alone may open more connections
    than the server's `available` (max_connections less the reserved ones); return a warning
    (empty: none) when it fits alone but not next to the `in_use` connections already open."""
    own = agents_connections(settings)
    if own > available:
        raise ConnectionBudgetError(
            f"this agents process may open {own} PostgreSQL connections (AGENT_WORKERS="
            f"{settings.AGENT_WORKERS}: 2 per worker loop, plus 2 x DATABASE_POOL_SIZE="
            f"{settings.DATABASE_POOL_SIZE} and DATABASE_MAX_OVERFLOW="
            f"{settings.DATABASE_MAX_OVERFLOW}) but the server takes {available} "
            "(max_connections less its reserved ones): lower AGENT_WORKERS or the pool "
            "settings, raise max_connections, or put PgBouncer in front (docs/scale-out.md)"
        )
    if in_use + own > available:
        return (
            f"{in_use} PostgreSQL connections are open and this agents process may open {own} "
            f"more, over the {available} the server takes: busy moments may be refused "
            "(docs/scale-out.md)"
        )
    return ""
