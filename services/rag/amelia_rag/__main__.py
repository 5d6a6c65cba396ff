"""`python -m amelia_rag` / `amelia-rag`: run the rag service (embedded servers when unset)."""

from __future__ import annotations

import asyncio

from amelia_common import telemetry
from amelia_common.embedded import ensure_infrastructure
from amelia_common.logging import configure_logging, get_logger
from amelia_common.settings import get_settings
from amelia_rag.server import StartupError, build_service


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "rag")
    telemetry.start(settings, "rag")
    log = get_logger("amelia.rag")
    infra = ensure_infrastructure(settings)

    async def run() -> None:
        service = await build_service(infra.settings)
        await service.serve()

    try:
        asyncio.run(run())
    except StartupError as exc:
        log.error("cannot start", error=str(exc))
        raise SystemExit(f"amelia-rag: {exc}") from None
    except KeyboardInterrupt:
        pass
    finally:
        infra.stop()


if __name__ == "__main__":
    main()
