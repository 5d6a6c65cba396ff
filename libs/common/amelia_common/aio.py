"""How a service process runs its event loop: on uvloop, unless AMELIA_UVLOOP=0.

uvloop (libuv) spends less CPU per socket read/write and callback than asyncio's own loop; grpc.aio,
asyncpg, psycopg and nats-py all run on it. `AMELIA_UVLOOP=0` (read from the environment, since
the loop exists before the settings are loaded in some entry points) runs asyncio's loop instead,
e.g. to tell whether a problem is the loop's. Where uvloop is not installed (it does not build on
Windows) asyncio's loop is used.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uvloop_enabled() -> bool:
    """Whether `run` uses uvloop: installed, and AMELIA_UVLOOP is not 0/false/no/off."""
    if os.environ.get("AMELIA_UVLOOP", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when `uvloop_enabled()`, else None (asyncio's default loop)."""
    if not uvloop_enabled():
        return None
    import uvloop

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_factory` chooses."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
