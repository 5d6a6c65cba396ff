"""An interrupt (or rollback) CreateRun and a default (reject) CreateRun sent at the same instant
on a thread whose run is streaming: whichever reaches the database first, exactly one behaviour
— the interrupt's run is accepted (it stops the thread's run, then runs once), the default one
is refused FAILED_PRECONDITION naming the thread's run. No run lost, none duplicated: the
thread's runs are the stopped one (gone after a rollback) and the new one, each with one end
event. Real workers of the in-process agents service, offline models."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from agents_helpers import S, Stub, wait_status
from faults_helpers import terminal_events
from test_agents_multitask import LONG, SLOW, TRANSCRIPT, chat, first_token

from amelia_common.settings import Settings


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
async def test_a_strategy_and_a_default_create_run_at_the_same_instant(
    agents: Stub, settings: Settings, strategy: str
) -> None:
    first = await chat(agents, "", LONG, SLOW)
    await first_token(agents, first.name)
    new, plain = await asyncio.gather(
        chat(agents, first.thread, "new", TRANSCRIPT, strategy),
        chat(agents, first.thread, "plain", TRANSCRIPT),
        return_exceptions=True,
    )
    assert isinstance(new, S.Run), new
    assert isinstance(plain, grpc.aio.AioRpcError), plain
    assert plain.code() == grpc.StatusCode.FAILED_PRECONDITION, plain
    assert "already has an active run" in (plain.details() or "")

    done = await wait_status(agents, new.name, S.RUN_STATUS_COMPLETED, timeout=60)
    assert done.attempt == 1
    listed = await agents.ListRuns(S.ListRunsRequest(thread=first.thread))
    names = [run.name for run in listed.runs]
    if strategy == "interrupt":
        assert names == [new.name, first.name], names
        stopped = (await agents.GetRun(S.GetRunRequest(name=first.name))).run
        assert stopped.status == S.RUN_STATUS_CANCELLED
        assert stopped.error == f"interrupted by {new.name} (multitask_strategy interrupt)"
        ends = await terminal_events(settings, 0, [first.name, new.name])
        assert ends[first.name] == ends[new.name] == 1, ends
    else:
        assert names == [new.name], names
        ends = await terminal_events(settings, 0, [new.name])
        assert ends[new.name] == 1, ends
    # The new run's model saw its own message (the refused one left nothing in the thread).
    assert "user: new" in done.output["message"] and "plain" not in done.output["message"]
