"""`python -m amelia_events` / `amelia-events`: run the events service."""

from __future__ import annotations

import asyncio

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
        asyncio.run(_serve(infra.settings))
    finally:
        infra.stop()


async def _serve(settings: Settings) -> None:
    svc = await build_service(settings)
    await svc.serve()


if __name__ == "__main__":
    main()
