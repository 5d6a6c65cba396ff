"""Multitask strategies on a busy thread (LangGraph Server's `multitask_strategy`): reject,
enqueue, interrupt, rollback — real workers of the in-process agents service, offline models
(`offline:transcript` replies with the whole conversation, so a reply shows what the thread's
memory held)."""

from __future__ import annotations

import asyncio

import grpc
from agents_helpers import S, Stub, collect, create_run, data, rpc_error, types, wait_status

from amelia_common.settings import Settings

SLOW = "offline:echo?delay_ms=100"
TRANSCRIPT = "offline:transcript"
LONG = " ".join(f"word{i}" for i in range(300))  # 30 s at 100 ms a token: stopped long before


async def chat(stub: Stub, thread: str, message: str, model: str, strategy: str = "") -> S.Run:
    return await create_run(
        stub,
        workflow="workflows/chat",
        thread=thread,
        input={"message": message, "model": model},
        multitask_strategy=strategy,
    )


async def first_token(stub: Stub, name: str) -> None:
    """Once the run has streamed its first token (it is inside its model call)."""
    call = stub.StreamRun(S.StreamRunRequest(name=name))
    async with asyncio.timeout(60):
        async for response in call:
            if response.event.type == "run.token":
                call.cancel()
                return
    raise AssertionError(f"{name} ended before its first token")


def started_after_end(before: S.Run, after: S.Run) -> bool:
    return after.start_time.ToDatetime() >= before.end_time.ToDatetime()


async def test_reject_is_the_default_and_unchanged(agents: Stub) -> None:
    first = await chat(agents, "", LONG, SLOW)
    try:
        await first_token(agents, first.name)
        for strategy in ("", "reject"):
            error = await rpc_error(chat(agents, first.thread, "again", TRANSCRIPT, strategy))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert first.name in (error.details() or "")
            assert "multitask_strategy" in (error.details() or "")
        bad = await rpc_error(chat(agents, first.thread, "again", TRANSCRIPT, "later"))
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "enqueue, interrupt, rollback" in (bad.details() or "")
    finally:
        await agents.CancelRun(S.CancelRunRequest(name=first.name))
    assert (await wait_status(agents, first.name, S.RUN_STATUS_CANCELLED)).error == "cancelled"


async def test_enqueued_runs_run_in_order_each_after_the_one_before_ended(agents: Stub) -> None:
    first = await chat(agents, "", "one two three four five", "offline:echo?delay_ms=60")
    second = await chat(agents, first.thread, "second", TRANSCRIPT, "enqueue")
    third = await chat(agents, first.thread, "third", TRANSCRIPT, "enqueue")
    assert second.status == third.status == S.RUN_STATUS_QUEUED
    assert second.multitask_strategy == "enqueue"
    assert second.queued_behind == third.queued_behind == first.name
    listed = await agents.ListRuns(S.ListRunsRequest(thread=first.thread))
    behind = {run.name: run.queued_behind for run in listed.runs}
    if behind[first.name] == "":  # (the first may have ended already on a fast machine)
        assert behind[third.name] in (first.name, second.name)

    runs = [
        await wait_status(agents, r.name, S.RUN_STATUS_COMPLETED) for r in (first, second, third)
    ]
    assert started_after_end(runs[0], runs[1]) and started_after_end(runs[1], runs[2])
    assert all(run.queued_behind == "" for run in runs)
    # The thread's memory chains them: the third run's model saw both earlier turns.
    assert runs[2].output["message"] == (
        "user: one two three four five\nassistant: one two three four five\n"
        f"user: second\nassistant: {runs[1].output['message']}\nuser: third"
    )
    queued = data(await collect(agents, third.name), "run.queued")
    assert queued == [
        {"run": third.name, "attempt": 0, "behind": first.name, "strategy": "enqueue"}
    ]


async def test_interrupt_stops_the_run_and_the_new_one_continues_its_state(agents: Stub) -> None:
    first = await chat(agents, "", LONG, SLOW)
    stream = asyncio.create_task(collect(agents, first.name))
    await first_token(agents, first.name)
    second = await chat(agents, first.thread, "what did I say?", TRANSCRIPT, "interrupt")
    # The thread stays busy while the stopped run winds down and the new one waits or runs:
    # a default run is refused, an enqueued one goes behind the new run.
    refused = await rpc_error(chat(agents, first.thread, "and now?", TRANSCRIPT))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    third = await chat(agents, first.thread, "and now?", "offline:echo", "enqueue")
    assert third.queued_behind == second.name

    done = await wait_status(agents, second.name, S.RUN_STATUS_COMPLETED)
    stopped = await wait_status(agents, first.name, S.RUN_STATUS_CANCELLED)
    reason = f"interrupted by {second.name} (multitask_strategy interrupt)"
    assert stopped.error == reason
    assert started_after_end(stopped, done)
    after = await wait_status(agents, third.name, S.RUN_STATUS_COMPLETED)
    assert started_after_end(done, after)
    assert stopped.output["partial"].startswith("word0 ")  # what it streamed is kept
    events = await stream
    assert types(events)[-1] == "run.cancelled"
    assert data(events, "run.cancelled")[0]["reason"] == reason
    # The interrupted run's input is in the thread's memory: the new run's model saw it.
    assert done.output["message"] == f"user: {LONG}\nuser: what did I say?"


async def test_rollback_leaves_no_trace_of_the_stopped_run(agents: Stub) -> None:
    before = await chat(agents, "", "kept", TRANSCRIPT)
    await wait_status(agents, before.name, S.RUN_STATUS_COMPLETED)
    history = await agents.ListThreadHistory(
        S.ListThreadHistoryRequest(parent=before.thread, page_size=1000)
    )
    kept = [state.checkpoint for state in history.states]
    first = await chat(agents, before.thread, LONG, SLOW)
    stream = asyncio.create_task(collect(agents, first.name))
    await first_token(agents, first.name)
    second = await chat(agents, first.thread, "what did I say?", TRANSCRIPT, "rollback")

    done = await wait_status(agents, second.name, S.RUN_STATUS_COMPLETED)
    events = await stream  # a client following the stopped run is told why it ended
    assert data(events, "run.cancelled")[0]["reason"] == (
        f"rolled back by {second.name} (multitask_strategy rollback)"
    )
    gone = await rpc_error(agents.GetRun(S.GetRunRequest(name=first.name)))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    listed = await agents.ListRuns(S.ListRunsRequest(thread=first.thread))
    assert [run.name for run in listed.runs] == [second.name, before.name]
    history = await agents.ListThreadHistory(
        S.ListThreadHistoryRequest(parent=first.thread, page_size=1000)
    )
    runs = {state.run for state in history.states}
    assert first.name not in runs and runs <= {before.name, second.name}
    assert [s.checkpoint for s in history.states if s.run == before.name] == kept
    # The thread went back to before the stopped run: the new run never saw its message.
    assert done.output["message"] == "user: kept\nassistant: user: kept\nuser: what did I say?"


async def test_two_enqueues_racing_on_a_free_thread_run_one_after_the_other(
    agents: Stub,
) -> None:
    thread = (await agents.CreateThread(S.CreateThreadRequest())).thread.name
    racing = await asyncio.gather(
        chat(agents, thread, "left", "offline:echo?delay_ms=20", "enqueue"),
        chat(agents, thread, "right", "offline:echo?delay_ms=20", "enqueue"),
    )
    admitted = [run for run in racing if not run.queued_behind]
    waiting = [run for run in racing if run.queued_behind]
    assert len(admitted) == 1 and len(waiting) == 1
    assert waiting[0].queued_behind == admitted[0].name
    done = [
        await wait_status(agents, r.name, S.RUN_STATUS_COMPLETED) for r in (*admitted, *waiting)
    ]
    assert started_after_end(done[0], done[1])


async def test_a_paused_run_keeps_the_queue_waiting_until_it_is_answered(
    agents: Stub, agents_settings: Settings
) -> None:
    asked = await create_run(agents, workflow="workflows/test-ask", input={"message": "q"})
    await wait_status(agents, asked.name, S.RUN_STATUS_PAUSED)
    after = await chat(agents, asked.thread, "next", TRANSCRIPT, "enqueue")
    assert after.queued_behind == asked.name
    # Nothing moves while the question waits: the reconciler leaves it alone too.
    still = (await agents.GetRun(S.GetRunRequest(name=after.name))).run
    assert still.status == S.RUN_STATUS_QUEUED and still.queued_behind == asked.name
    answer = S.ResumeRunRequest(name=asked.name)
    answer.answer.string_value = "yes"
    await agents.ResumeRun(answer)
    answered = await wait_status(agents, asked.name, S.RUN_STATUS_COMPLETED)
    done = await wait_status(agents, after.name, S.RUN_STATUS_COMPLETED)
    assert started_after_end(answered, done)
    assert done.output["message"] == "user: next"
