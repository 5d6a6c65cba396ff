"""A run's input with a whole number too wide for 64 bits (a double's 1e30) runs, and reads back
as that double.

QA s22 (through the gateway's helper): CreateRun accepted `{"x": 1e30}`, and the run FAILED at
its first checkpoint, `TypeError: Integer exceeds 64-bit range`: PostgreSQL's JSONB writes the
double back as 1000000000000000000000000000000, which Python read as an int that a checkpoint's
msgpack cannot hold."""

from __future__ import annotations

from typing import Any

from agents_helpers import S, create_run, serve_agents, wait_status
from test_agents_queue_faults import FINISHED, fault_settings


async def test_a_whole_number_beyond_64_bits_in_a_runs_input_runs_and_reads_back(
    infra: Any, events_address: str
) -> None:
    settings = fault_settings(infra, events_address, "AMELIA_RUNS_BIG_NUMBERS", AGENT_WORKERS=1)
    async with serve_agents(settings) as api:
        run = await create_run(
            api,
            workflow="workflows/echo",
            input={"message": "wide", "x": 1e30, "y": -2e19, "z": 2**62},
        )
        done = await wait_status(api, run.name, *FINISHED, timeout=60)
        state = await api.GetThreadState(S.GetThreadStateRequest(thread=done.thread))
    assert (S.RunStatus.Name(done.status), done.error) == ("RUN_STATUS_COMPLETED", "")
    assert (done.input["x"], done.input["y"], done.input["z"]) == (1e30, -2e19, 2**62)
    assert state.state.values["request"]["x"] == 1e30
