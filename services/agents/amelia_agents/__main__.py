"""`python -m amelia_agents` / `amelia-agents`: the AgentService with its in-process workers."""

from __future__ import annotations

import asyncio

from amelia_agents.server import build_service
from amelia_common import telemetry
from amelia_common.embedded import ensure_infrastructure
from amelia_common.logging import configure_logging
from amelia_common.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "agents")
    telemetry.start(settings, "agents")
    infra = ensure_infrastructure(settings)

    async def serve() -> None:
        service = await build_service(infra.settings)
        await service.serve()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
