"""The gateway bench's WebSocket subscribers in one Node.js process (bench/_ws_clients.mjs).

Reading 100 sockets costs the clients 2-3x the gateway's CPU per event: whether that was
Python's (websockets, orjson) is what this answers. Measured side by side, Node's own WebSocket
client and JSON.parse cost about the same per event (5-6.6 µs, docs/performance.md): parsing
every event is what a client costs. It stays the default reader of the WebSocket rows: one
process instead of two, and not Python's runtime measuring Python's gateway. Same commands and
reports as bench/_subscribers.py, as JSON lines over the process's stdin and stdout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil

from bench._subscribers import WEBSOCKET_BATCHED, Phase, Report

SCRIPT = Path(__file__).with_name("_ws_clients.mjs")
NODE_FLAGS = ["--experimental-websocket", "--no-warnings"]
# A report carries every latency of 100 sockets (a million for the steady phase).
LINE_LIMIT = 256 * 2**20


def node_websocket() -> str | None:
    """Why Node cannot be the bench's WebSocket client here, or None when it can (a `node` with
    a WebSocket client: Node 22, or Node 20.10+ with --experimental-websocket)."""
    node = shutil.which("node")
    if node is None:
        return "no node on PATH"
    probe = subprocess.run(
        [node, *NODE_FLAGS, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
        capture_output=True,
        check=False,
    )
    return None if probe.returncode == 0 else "this node has no WebSocket client"


class NodeSubscribers:
    """A row's WebSocket subscribers, all in one Node.js process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, kind: str, url: str, subject: str, count: int) -> NodeSubscribers:
        batch = "1" if kind == WEBSOCKET_BATCHED else "0"
        process = await asyncio.create_subprocess_exec(
            "node",
            *NODE_FLAGS,
            str(SCRIPT),
            url,
            subject,
            str(count),
            batch,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        subscribers = cls(process)
        await subscribers._answer(120.0)  # every socket open and subscribed
        return subscribers

    async def _answer(self, timeout: float) -> Any:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the node subscribers exited ({await self.process.wait()})")
        return json.loads(line)

    async def ask(self, command: dict[str, Any], timeout: float = 60.0) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()
        return await self._answer(timeout)

    async def reset(self, phase: Phase) -> None:
        await self.ask({"reset": dataclasses.asdict(phase)})

    async def all_done(self) -> bool:
        return bool(await self.ask({"status": True}))

    async def wait(self, timeout: float) -> list[Report]:
        return [Report(**await self.ask({"wait": timeout}, timeout=timeout + 60))]

    def processes(self) -> dict[str, psutil.Process]:
        return {"clients (node)": psutil.Process(self.process.pid)}

    async def close(self) -> None:
        try:
            await self.ask({"close": True}, timeout=10)
            await asyncio.wait_for(self.process.wait(), 10)
        except (OSError, RuntimeError, TimeoutError, ValueError):
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
