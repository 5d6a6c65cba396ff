"""A real mesh for the TUI tests, and helpers to drive the TUI like a person at a keyboard.

The events, agents and rag services run in this process (on the session's PostgreSQL and NATS),
with an API token; the gateway runs as its own process (`python -m amelia_gateway`, as `amelia
up` runs it) on a port fixed for the session, so a test can kill it and start a new one where the
TUI expects it: a real gateway restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from service_process import ServiceProcess
from textual import events
from textual.pilot import Pilot

from amelia_cli.tui.app import AmeliaApp
from amelia_common.embedded import free_port
from amelia_common.grpc_server import GrpcService
from amelia_common.settings import Settings

TOKEN = "tui-test-token"
DEADLINE = 150.0  # seconds any awaited condition may take on a busy machine


@dataclass
class GatewayProcess:
    """`python -m amelia_gateway` on `port` (a `ServiceProcess`); `start()` again after `kill()`
    starts a new one on the same port, logging to a file of its own."""

    port: int
    env: dict[str, str]
    directory: Path
    process: ServiceProcess | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.starts += 1
        log = self.directory / f"gateway-{self.starts}.log"
        self.process = process = ServiceProcess("amelia_gateway", self.env, log)
        async with httpx.AsyncClient(base_url=self.url) as http:

            async def healthy() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get("/healthz")).status_code == 200
                return False

            await process.wait_until(healthy, "answered /healthz", DEADLINE)

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL: a crash; SIGTERM: a graceful stop (SIGKILL if it takes over 30 s)."""
        if self.process is None:
            return
        if sig == signal.SIGKILL:
            self.process.kill()
        await self.process.stop()


@dataclass
class TuiMesh:
    gateway: GatewayProcess
    http: httpx.AsyncClient  # the gateway's HTTP API, with the token
    settings: Settings  # the services' (EVENTS_ADDRESS: the events service, past the gateway)
    services: list[GrpcService] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(path, json=body)
        response.raise_for_status()
        reply: dict[str, Any] = response.json()
        return reply

    async def get(self, path: str) -> dict[str, Any]:
        response = await self.http.get(path)
        response.raise_for_status()
        reply: dict[str, Any] = response.json()
        return reply


def gateway_env(port: int, addresses: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    return (
        keep
        | addresses
        | {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "AMELIA_API_TOKEN": TOKEN,
            "LOG_LEVEL": "WARNING",
        }
    )


def new_gateway(directory: Path, addresses: dict[str, str]) -> GatewayProcess:
    port = free_port()
    return GatewayProcess(port, gateway_env(port, addresses), directory)


# -- driving the TUI ------------------------------------------------------------------------


async def wait_until(
    condition: Callable[[], Any],
    what: str = "condition",
    timeout: float = DEADLINE,
    seen: Callable[[], Any] | None = None,
) -> None:
    """Let the app work until `condition()` holds (a generous deadline, never a speed test);
    `seen()` says what there was instead when it does not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            instead = f"; instead: {seen()}" if seen else ""
            raise AssertionError(f"not met within {timeout:.0f}s: {what}{instead}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_tui(
    url: str, token: str = TOKEN, size: tuple[int, int] = (80, 24)
) -> AsyncIterator[Pilot[None]]:
    """The TUI in a headless terminal of `size`, connected to the gateway."""
    app = AmeliaApp(url, token)
    async with app.run_test(size=size) as pilot:
        await wait_until(lambda: app.connection == "open", "the TUI's socket is open")
        yield pilot


async def type_text(pilot: Pilot[None], text: str) -> None:
    """Type `text` key by key into whatever has the focus."""
    await pilot.press(*("space" if char == " " else char for char in text))


async def paste(pilot: Pilot[None], text: str) -> None:
    """Paste `text` (a terminal's bracketed paste) into the focused box."""
    assert pilot.app.focused is not None, "nothing has the focus"
    pilot.app.post_message(events.Paste(text))  # as the driver does: the app hands it on
    await pilot.pause()


def on_screen(pilot: Pilot[None], kind: type[Any]) -> Any:
    screen = pilot.app.screen
    assert isinstance(screen, kind), f"expected {kind.__name__}, the screen is {screen!r}"
    return screen
