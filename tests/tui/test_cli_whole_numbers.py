"""Whole numbers read as integers, as grpc-gateway writes them, wherever a client reads JSON:
the gateway's responses (a thread's `metadata.step`), its events (`attempt`), over HTTP and the
WebSocket, and the CLI's --json. A Struct holds every number as a double, so these were 6.0 and
1.0 before (QA, session 14). On the TUI tests' real mesh, a real gateway process."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import websockets
from cli_helpers import amelia
from test_cli_output import cli_env
from test_cli_threads import _chat
from test_events_cli import amelia_events
from tui_helpers import DEADLINE, TOKEN, TuiMesh


def _floats(value: Any, path: str = "") -> list[str]:
    """Where `value` (parsed JSON) holds a whole number written as a float (`6.0`)."""
    if isinstance(value, float) and value.is_integer():
        return [path]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _floats(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _floats(item, f"{path}[{i}]")]
    return []


async def _socket_events(mesh: TuiMesh, subject: str) -> list[dict[str, Any]]:
    """The run's stored events replayed over the gateway's WebSocket (from sequence 0)."""
    url = mesh.url.replace("http://", "ws://") + "/ws"
    events: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        asyncio.timeout(DEADLINE),
        websockets.connect(url, additional_headers=headers) as socket,
    ):
        subscribe = {"type": "subscribe", "id": "s", "filter": {"subject": subject}}
        await socket.send(json.dumps({**subscribe, "since": "beginning"}))
        while not any(e["type"] == "run.completed" for e in events):
            message = json.loads(await socket.recv())
            if message["type"] == "event":
                events.append(message["event"])
            elif message["type"] == "events":
                events.extend(item["event"] for item in message["events"])
    return events


async def test_whole_numbers_are_integers(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    run = await _chat(tui_mesh, f"count {uuid.uuid4().hex[:6]}")
    thread, name = run["thread"], run["name"]

    state = (await tui_mesh.http.get(f"/v1/{thread}/state")).json()["state"]
    assert isinstance(state["metadata"]["step"], int) and state["metadata"]["step"] >= 1, state
    assert _floats(state) == [], state

    listed = await tui_mesh.http.get("/v1/events", params={"filter.subject": name})
    events = listed.json()["events"]
    attempts = [e["data"]["attempt"] for e in events if "attempt" in (e["data"] or {})]
    assert attempts and attempts == [1] * len(attempts), events
    assert all(isinstance(attempt, int) for attempt in attempts), events
    assert _floats(events) == [], events

    over_socket = await _socket_events(tui_mesh, name)
    assert _floats(over_socket) == [], over_socket
    assert [e["data"] for e in over_socket] == [e["data"] for e in events], over_socket

    env = cli_env(tui_mesh, tmp_path / "none")
    code, shown = await asyncio.to_thread(amelia, env, "threads", "state", thread, "--json")
    assert code == 0, shown
    assert json.loads(shown)["metadata"]["step"] == state["metadata"]["step"], shown
    assert _floats(json.loads(shown)) == [], shown
    # `amelia events` (its own process: it reads the gateway's JSON and handles Ctrl-C)
    process = await amelia_events(tui_mesh, "--subject", name, "--json")
    async with asyncio.timeout(DEADLINE):
        out, errors = await process.communicate()
    assert process.returncode == 0, errors
    shown = out.decode()
    lines = [json.loads(line) for line in shown.splitlines() if line.startswith("{")]
    assert [e["data"] for e in lines] == [e["data"] for e in events], shown
    assert _floats(lines) == [], shown
