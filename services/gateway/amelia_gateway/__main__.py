"""`python -m amelia_gateway` / `amelia-gateway`: run the gateway on HOST:PORT."""

from __future__ import annotations

import asyncio

from amelia_common import telemetry
from amelia_common.logging import configure_logging, get_logger
from amelia_common.settings import get_settings
from amelia_gateway.server import build_server


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "gateway")
    telemetry.start(settings, "gateway")
    log = get_logger("amelia.gateway")
    if not settings.api_token and settings.bind_host != settings.HOST:
        log.warning("no AMELIA_API_TOKEN set: listening on loopback only", requested=settings.HOST)
    server = build_server(settings)
    log.info(
        "gateway listening",
        address=f"http://{settings.bind_host}:{settings.PORT}",
        events=settings.EVENTS_ADDRESS,
        agents=settings.AGENTS_ADDRESS,
        rag=settings.RAG_ADDRESS,
    )
    asyncio.run(server.serve())


if __name__ == "__main__":
    main()
