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
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
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
    """`python -m amelia_gateway` on `port`; `start()` again after `kill()` reuses the port."""

    port: int
    env: dict[str, str]
    log_file: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "amelia_gateway",
                env=self.env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        self.starts += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        async with httpx.AsyncClient(base_url=self.url) as http:
            while loop.time() < deadline:
                if self.process.returncode is not None:
                    raise RuntimeError(f"the gateway exited:\n{self.log()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the gateway did not start:\n{self.log()}")

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()
            await process.wait()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]


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
    return GatewayProcess(port, gateway_env(port, addresses), directory / "gateway.log")


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
