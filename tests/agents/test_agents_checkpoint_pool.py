"""A worker loop holds one checkpoint connection for its whole pick-up, so the checkpoint pool
has one per loop on top of DATABASE_POOL_SIZE: more loops than the pool size still run their
runs side by side, and the API still reads checkpoints meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agents_helpers import S, serve_agents, wait_status

from amelia_common.settings import Settings

LOOPS = 3
TEST_WORKFLOWS = "agent_test_workflows"


async def _all_in_node_b(records: list[Path], timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not all(r.exists() and "b " in r.read_text() for r in records):
        started = [r.name for r in records if r.exists() and "b " in r.read_text()]
        assert asyncio.get_running_loop().time() < deadline, f"only {started} reached node b"
        await asyncio.sleep(0.05)


async def test_more_worker_loops_than_the_pool_size_run_side_by_side(
    infra: object, events_address: str, tmp_path: Path
) -> None:
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        EVENTS_ADDRESS=events_address,
        AGENT_WORKERS=LOOPS,
        DATABASE_POOL_SIZE=1,
        AGENT_WORKFLOW_MODULES=[TEST_WORKFLOWS],
    )
    release = tmp_path / "release"
    records = [tmp_path / f"record{i}" for i in range(LOOPS)]
    async with serve_agents(settings) as api:
        runs = []
        for record in records:
            request = S.CreateRunRequest(run=S.Run(workflow="workflows/test-steps"))
            request.run.input.update({"record": str(record), "release": str(release)})
            runs.append((await api.CreateRun(request)).run)
        # Every loop is inside node b at once, each holding its pick-up's connection.
        await _all_in_node_b(records)
        steps = await api.ListRunSteps(S.ListRunStepsRequest(parent=runs[0].name), timeout=20)
        assert [step.node for step in steps.steps] == ["a", "b"]
        release.touch()
        for run in runs:
            done = await wait_status(api, run.name, S.RUN_STATUS_COMPLETED, timeout=60)
            assert dict(done.output)["done"] == ["a", "b", "c"]
