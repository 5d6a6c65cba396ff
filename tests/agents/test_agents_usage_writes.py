"""A run's token usage as a user reads it: on the run while it still runs (a model call's usage
is held half a second, then written) and, once it ends, counted once — what was written while
it ran plus what went into the statement recording its end (docs/performance.md, session 12)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypedDict

from agents_helpers import S, collect, create_run, data, register_said_workflow, types, wait_status

from amelia.v1 import agents_pb2_grpc
from amelia_agents import runtime
from amelia_agents.workflows.registry import linear_graph

REPLY = "one two three"


class GateState(TypedDict, total=False):
    said: list[str]


def register_call_then_gate(gate: asyncio.Event) -> str:
    """A workflow whose node `a` makes one model call and whose node `b` waits for `gate`, then
    makes another."""
    name = f"test-usage-{uuid.uuid4().hex[:8]}"

    async def call(state: GateState) -> dict[str, Any]:
        result = await runtime.chat(
            [{"role": "user", "content": "go"}], model=f"offline:say:{REPLY}"
        )
        return {"said": [*state.get("said", []), result.text]}

    async def wait_then_call(state: GateState) -> dict[str, Any]:
        await gate.wait()
        return await call(state)

    return register_said_workflow(
        name,
        "test: a model call, then another once the test opens the gate",
        linear_graph(GateState, ("a", call), ("b", wait_then_call)),
    )


async def _usage_while_running(
    agents: agents_pb2_grpc.AgentServiceStub, name: str, timeout: float = 30
) -> S.Run:
    """The run as GetRun shows it once it has output tokens, while it is still RUNNING."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = (await agents.GetRun(S.GetRunRequest(name=name))).run
        # (QUEUED until a worker of the session's service is free: others' runs may hold them)
        assert run.status in (S.RUN_STATUS_QUEUED, S.RUN_STATUS_RUNNING), run
        if run.usage.output_tokens:
            assert run.status == S.RUN_STATUS_RUNNING, run
            return run
        assert asyncio.get_running_loop().time() < deadline, f"no usage on {name}: {run}"
        await asyncio.sleep(0.05)


async def test_usage_is_on_the_run_while_it_runs_and_counted_once_at_its_end(
    agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    gate = asyncio.Event()
    run = await create_run(agents, workflow=f"workflows/{register_call_then_gate(gate)}", input={})
    try:
        running = await _usage_while_running(agents, run.name)
    finally:
        gate.set()
    words = len(REPLY.split())
    assert running.usage.output_tokens == words  # node a's call, written while b waits
    events = await collect(agents, run.name)
    assert types(events)[-1] == "run.completed"
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    stored = {"input_tokens": done.usage.input_tokens, "output_tokens": done.usage.output_tokens}
    # b's call went in with the end: each call counted once, and the end event says the same.
    assert stored["output_tokens"] == 2 * words
    assert stored["input_tokens"] == 2 * running.usage.input_tokens
    assert data(events, "run.completed")[0]["usage"] == stored
