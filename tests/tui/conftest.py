"""Fixtures for the TUI tests: one real mesh for them all (see tui_helpers)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_textual_snapshot
from tui_helpers import TOKEN, TuiMesh, new_gateway

# pytest-textual-snapshot 1.0 names its file extension the syrupy 4 way (`_file_extension`);
# syrupy 7 reads `file_extension`. The frames are SVG images: store them as .svg.
pytest_textual_snapshot.SVGImageExtension.file_extension = "svg"


@pytest.fixture(scope="session")
async def tui_mesh(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TuiMesh]:
    from amelia_agents.server import build_service as build_agents
    from amelia_events.server import build_service as build_events
    from amelia_rag.server import build_service as build_rag

    # Small chunks, so a short document still makes several passages.
    common = {"AMELIA_API_TOKEN": TOKEN, "CHUNK_SIZE": 300, "CHUNK_OVERLAP": 50}
    events = await build_events(infra.settings(**common))
    events_port = await events.start()
    settings = infra.settings(**common, EVENTS_ADDRESS=f"127.0.0.1:{events_port}")
    rag = await build_rag(settings)
    rag_port = await rag.start()
    # The agents service asks rag for the passages of runs with context sources.
    agents = await build_agents(
        infra.settings(
            **common,
            EVENTS_ADDRESS=f"127.0.0.1:{events_port}",
            RAG_ADDRESS=f"127.0.0.1:{rag_port}",
            AGENT_WORKERS=2,
            # A queue of its own: the session's other agents services (tests/agents) have other
            # settings (no RAG_ADDRESS) and would otherwise take some of these runs.
            RUNS_QUEUE_STREAM="AMELIA_RUNS_TUI",
        )
    )
    agents_port = await agents.start()
    addresses = {
        "EVENTS_ADDRESS": f"127.0.0.1:{events_port}",
        "AGENTS_ADDRESS": f"127.0.0.1:{agents_port}",
        "RAG_ADDRESS": f"127.0.0.1:{rag_port}",
    }
    gateway = new_gateway(tmp_path_factory.mktemp("tui-gateway"), addresses)
    await gateway.start()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=60) as http:
        yield TuiMesh(gateway, http, settings, [events, agents, rag])
    await gateway.kill(signal.SIGTERM)
    for service in reversed([events, agents, rag]):
        await service.stop(1.0)
