"""`POST /v1/runs:stream` answers as a create: its status says whether the run was made (QA,
session 21: with NATS just stopped it answered 200 and a last error line, no run made — the
gateway had cut the create off for the dependency it was waiting out). A private nats-server
behind an agents service of the test's own, so stopping it disturbs no other test."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
from agents_helpers import running_agents
from gateway_helpers import start_gateway

from amelia_common.embedded import EmbeddedNats, free_port


async def test_a_create_refused_for_want_of_nats_is_a_503_and_makes_no_run(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    settings = infra.settings(
        NATS_URL=nats.start(),
        EVENTS_ADDRESS=events_address,
        AGENT_WORKERS=1,
        EVENTS_PUBLISH_TIMEOUT_SECONDS=3.0,
        RUNS_QUEUE_STREAM=f"AMELIA_RUNS_HTTP_STREAM_{uuid.uuid4().hex[:8]}",
    )
    try:
        async with running_agents(settings) as agents:
            address = f"127.0.0.1:{agents.service.bound_port}"
            gateway = await start_gateway(settings.model_copy(update={"AGENTS_ADDRESS": address}))
            try:
                async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as http:
                    thread = (await http.post("/v1/threads", json={})).json()["thread"]["name"]
                    body = {
                        "run": {
                            "workflow": "workflows/echo",
                            "thread": thread,
                            "input": {"message": "a b c"},
                        }
                    }
                    await asyncio.to_thread(nats.stop)
                    refused = await http.post("/v1/runs:stream", json=body)
                    assert refused.status_code == 503, refused.text
                    status = refused.json()
                    assert status["code"] == 14 and "NATS" in status["message"], status
                    runs = (await http.get("/v1/runs", params={"thread": thread})).json()
                    assert not runs.get("runs"), runs
                    await asyncio.to_thread(nats.start)
                    # The same request once NATS is back (requestId in the query, as for
                    # POST /v1/runs): the run first, then its events to its end.
                    async with http.stream(
                        "POST", "/v1/runs:stream", params={"requestId": "again"}, json=body
                    ) as reply:
                        assert reply.status_code == 200
                        lines = [json.loads(line) async for line in reply.aiter_lines() if line]
                    assert lines[0]["result"]["run"]["thread"] == thread
                    assert lines[-1]["result"]["event"]["type"] == "run.completed", lines[-1]
            finally:
                await gateway.stop()
    finally:
        await asyncio.to_thread(nats.stop)
