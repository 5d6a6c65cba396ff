"""A run stopped mid-answer (out of time, or cancelled) keeps the text it streamed as its
`output.partial`: what the user watched stream is on the run, not only in its events."""

from __future__ import annotations

import asyncio
import uuid

from agents_helpers import S, collect, create_run, tokens, types, wait_status
from test_agents_runs import _agent, _stream_until


async def _output_when_kept(stub, name: str, deadline: float = 30) -> dict:
    """The run's output once its worker stored it (a cancel is recorded by CancelRun first)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    while True:
        run = (await stub.GetRun(S.GetRunRequest(name=name))).run
        if run.output or loop.time() > until:
            return dict(run.output)
        await asyncio.sleep(0.05)


async def test_a_run_out_of_time_keeps_what_it_streamed(agents, fake_anthropic) -> None:
    # `hold-<key>`: the model streams its first token, then waits for the test (never released
    # before the run's 5 s are up): the run times out mid-answer.
    key = uuid.uuid4().hex[:8]
    name = await _agent(agents, f"partial-timeout-{key}", f"anthropic:hold-{key}")
    try:
        run = await create_run(agents, agent=name, input={"message": "tell me more"}, timeout=5)
        events = await collect(agents, run.name)
        failed = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    finally:
        fake_anthropic.release(key)
    assert types(events)[-1] == "run.failed"
    assert failed.error.startswith("timeout: the run took longer than 5s")
    streamed = "".join(tokens(events))
    assert streamed == "user: "  # the transcript's first token
    assert dict(failed.output) == {"partial": streamed}


async def test_a_cancelled_run_keeps_what_it_streamed(agents, fake_anthropic) -> None:
    key = uuid.uuid4().hex[:8]
    name = await _agent(agents, f"partial-cancel-{key}", f"anthropic:hold-{key}")
    try:
        run = await create_run(agents, agent=name, input={"message": "tell me more"})
        task, _ = await _stream_until(agents, run.name, lambda ev: len(tokens(ev)) >= 1)
        await agents.CancelRun(S.CancelRunRequest(name=run.name, reason="enough"))
        events = await asyncio.wait_for(task, 30)
        output = await _output_when_kept(agents, run.name)
    finally:
        fake_anthropic.release(key)
    assert types(events)[-1] == "run.cancelled"
    assert tokens(events) == ["user: "]
    assert output == {"partial": "user: "}
    cancelled = (await agents.GetRun(S.GetRunRequest(name=run.name))).run
    assert cancelled.status == S.RUN_STATUS_CANCELLED and cancelled.error == "enough"


async def test_a_run_stopped_before_any_token_has_no_output(agents) -> None:
    run = await create_run(
        agents, workflow="workflows/test-sleep", input={"seconds": 60}, timeout=1
    )
    await collect(agents, run.name)
    failed = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    assert not failed.HasField("output")
