"""What a cancelled run leaves behind reads as a cancel, not a failure. QA: CancelRun of a
streaming chat run published `workflow.failed {"error": "cancelled"}` before `run.cancelled`, and
ListRunSteps showed the interrupted step FAILED with error `CancelledError()`. Now the lifecycle
event is `workflow.cancelled` (with the reason) and the step reads RUN_STEP_STATE_CANCELLED with
a sentence saying the run was cancelled while it ran."""

from __future__ import annotations

import asyncio

from agents_helpers import S, create_run, data, tokens, types


async def _steps_settled(agents, name: str) -> list[S.RunStep]:
    """The run's steps once none is PENDING any more (checkpoints are written behind)."""
    async with asyncio.timeout(30):
        while True:
            reply = await agents.ListRunSteps(S.ListRunStepsRequest(parent=name))
            steps = list(reply.steps)
            if steps and all(s.state != S.RUN_STEP_STATE_PENDING for s in steps):
                return steps
            await asyncio.sleep(0.05)


async def test_a_cancelled_chat_reads_cancelled_in_its_events_and_steps(agents) -> None:
    run = await create_run(
        agents, workflow="workflows/chat", input={"message": "talk", "model": "anthropic:slow"}
    )
    seen: list = []
    three = asyncio.Event()

    async def read() -> list:
        async for response in agents.StreamRun(S.StreamRunRequest(name=run.name)):
            seen.append(response.event)
            if len(tokens(seen)) >= 3:
                three.set()
        return seen

    reader = asyncio.create_task(read())
    await asyncio.wait_for(three.wait(), 30)
    await agents.CancelRun(S.CancelRunRequest(name=run.name, reason="enough"))
    events = await asyncio.wait_for(reader, 30)

    assert "workflow.failed" not in types(events) and "run.failed" not in types(events)
    assert types(events)[-2:] == ["workflow.cancelled", "run.cancelled"]
    assert data(events, "workflow.cancelled")[0]["reason"] == "enough"

    steps = await _steps_settled(agents, run.name)
    respond = [s for s in steps if s.node == "respond"]
    assert len(respond) == 1, steps
    assert respond[0].state == S.RUN_STEP_STATE_CANCELLED
    assert respond[0].error == "cancelled: the run was cancelled (enough) while this step ran"
    assert all(s.state != S.RUN_STEP_STATE_FAILED for s in steps)
