"""Runs end to end: streaming, providers, failures, cancel, human in the loop, thread memory."""

from __future__ import annotations

from agents_helpers import S, collect, create_run, data, tokens, types, wait_status


async def test_echo_streams_tokens_in_order_and_output_is_their_concatenation(agents) -> None:
    message = "the quick brown fox jumps over the lazy dog"
    run = await create_run(agents, workflow="workflows/echo", input={"message": message})
    assert run.status == S.RUN_STATUS_QUEUED
    events = await collect(agents, run.name)
    assert types(events)[0] == "workflow.started"
    assert types(events)[-1] == "run.completed"
    assert "run.node.started" in types(events) and "run.node.finished" in types(events)
    assert "".join(tokens(events)) == message
    assert len(tokens(events)) == len(message.split())
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == message
    assert done.usage.output_tokens == len(message.split())
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert data(events, "run.completed")[0]["output"] == {"message": message}
