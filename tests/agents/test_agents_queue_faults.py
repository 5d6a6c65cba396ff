"""An accepted run always finishes: bursts of runs raced by several worker pools, a NATS restart,
a PostgreSQL outage and a lost queue message each end with every run finished, once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agents_helpers import serve_agents
from faults_support import burst, terminal_events, wait_all_finished, worker_pools

from amelia.v1 import agents_pb2_grpc
from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.settings import Settings

RUNS = 60


@pytest.fixture
def stress_settings(infra: object, events_address: str) -> Settings:
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        EVENTS_ADDRESS=events_address,
        AGENT_WORKERS=0,
        RUNS_QUEUE_STREAM="AMELIA_RUNS_STRESS",
        RUN_ACK_WAIT_SECONDS=3,
    )
    return settings


@pytest.fixture
async def api(stress_settings: Settings) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    async with serve_agents(stress_settings) as stub:
        yield stub


async def test_a_burst_of_runs_raced_by_several_worker_pools_all_finish(
    api: agents_pb2_grpc.AgentServiceStub, stress_settings: Settings
) -> None:
    async with worker_pools(stress_settings, pools=3, loops=2):
        names = await burst(api, RUNS)
        outcome = await wait_all_finished(api, names, timeout=120)
    assert outcome.statuses() == {"RUN_STATUS_COMPLETED": RUNS}


async def test_a_nats_restart_mid_burst_loses_no_run(
    infra: object, events_address: str, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        NATS_URL=nats.start(),
        EVENTS_ADDRESS=events_address,
        AGENT_WORKERS=0,
        RUN_ACK_WAIT_SECONDS=3,
    )
    try:
        async with serve_agents(settings) as stub, worker_pools(settings, pools=3, loops=2):
            names = await burst(stub, RUNS // 2)
            await asyncio.to_thread(nats.stop)
            await asyncio.to_thread(nats.start)
            names += await burst(stub, RUNS // 2, retry=True)
            outcome = await wait_all_finished(stub, names, timeout=180)
            counts = await terminal_events(settings, after=0)
    finally:
        await asyncio.to_thread(nats.stop)
    assert outcome.statuses() == {"RUN_STATUS_COMPLETED": RUNS}
    assert {name: counts[name] for name in names} == {name: 1 for name in names}
