"""`python -m amelia_events` / `amelia-events`: run the events service.

On uvloop when it is installed (a dependency of this package; `AMELIA_UVLOOP=0` keeps asyncio's
loop): a StreamEvents message costs the service a loop wake-up for gRPC's completion and one
for NATS's delivery, and libuv's are cheaper (docs/performance.md, session 13). The agents
service stays on asyncio's loop (session 10: a `git` subprocess failed under uvloop there);
this service starts no subprocesses.

gRPC's `pollset_alternative` experiment is on unless GRPC_EXPERIMENTS says otherwise (set it,
even empty, to choose): grpc.aio hands each completed operation from its poller thread to the
loop, and a one-event StreamEvents message is such an operation. With the experiment, gRPC
wakes that thread through a futex instead of a kicked epoll set (an eventfd write in the
loop's thread per message): a back-to-back stream's write cycle took 65 instead of 113 us
(median) and 43 instead of 60 us of the server's CPU per message (docs/performance.md,
session 14). gRPC reads the variable once, when it is imported: `main` sets it first.
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

# The gRPC core experiments this service runs with unless GRPC_EXPERIMENTS is set.
GRPC_EXPERIMENTS = "pollset_alternative"


def main() -> None:
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)  # before grpc is imported
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
    # Imported here: it imports grpc, which must come after `main` chose the experiments.
    from amelia_events.server import build_service

    svc = await build_service(settings)
    await svc.serve()


if __name__ == "__main__":
    main()
