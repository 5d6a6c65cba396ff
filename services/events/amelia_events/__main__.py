"""`python -m amelia_events` / `amelia-events`: run the events service.

On uvloop when it is installed (a dependency of this package; `AMELIA_UVLOOP=0` keeps asyncio's
loop): a StreamEvents message costs the service a loop wake-up for gRPC's completion and one
for NATS's delivery, and libuv's are cheaper (docs/performance.md, session 13). The agents
service stays on asyncio's loop (session 10: a `git` subprocess failed under uvloop there);
this service starts no subprocesses.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any

from amelia_common import telemetry
from amelia_common.embedded import ensure_infrastructure
from amelia_common.logging import configure_logging
from amelia_common.settings import Settings, get_settings
from amelia_events.server import build_service


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "events")
    telemetry.start(settings, "events")
    infra = ensure_infrastructure(settings, postgres=False)
    try:
        run(_serve(infra.settings))
    finally:
        infra.stop()


def run(main: Coroutine[Any, Any, None]) -> None:
    """`main` on uvloop if it is there and not turned off, else on asyncio's loop."""
    if os.environ.get("AMELIA_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


async def _serve(settings: Settings) -> None:
    svc = await build_service(settings)
    await svc.serve()


if __name__ == "__main__":
    main()
