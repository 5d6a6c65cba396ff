"""A run without input (it continues the thread) enqueued behind a busy thread: CreateRun saw
nodes left on the thread's checkpoint, but the run before it ran them. At its start the run
finds nothing to continue: it fails saying so, and never reports the earlier run's output as
its own. Also what refusals on such a thread say of its active runs. Real agents service,
PostgreSQL and NATS (the `agents` fixture)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from agents_helpers import S, Stub, create_run, rpc_error, wait_status

DONE = (S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED, S.RUN_STATUS_CANCELLED)


async def _token(stub: Stub, name: str, text: str) -> None:
    """Once the run has streamed the token `text`."""
    call = stub.StreamRun(S.StreamRunRequest(name=name))
    async with asyncio.timeout(60):
        async for response in call:
            if response.event.type == "run.token" and response.event.data["text"].startswith(text):
                call.cancel()
                return
    raise AssertionError(f"{name} ended before streaming {text!r}")


async def test_an_enqueued_continue_with_nothing_left_fails_and_copies_no_output(
    agents: Stub, tmp_path: Path
) -> None:
    record, release = tmp_path / "record", tmp_path / "release"
    first = await create_run(
        agents,
        workflow="workflows/test-steps",
        input={"record": str(record), "release": str(release)},
    )
    await _token(agents, first.name, "B1")  # held in b until released: next is b
    continued = (
        await agents.CreateRun(
            S.CreateRunRequest(
                run=S.Run(
                    thread=first.thread,
                    workflow="workflows/test-steps",
                    multitask_strategy="enqueue",
                )
            )
        )
    ).run
    assert continued.status == S.RUN_STATUS_QUEUED
    release.touch()
    ended = await wait_status(agents, first.name, *DONE)
    assert ended.status == S.RUN_STATUS_COMPLETED, ended.error

    after = await wait_status(agents, continued.name, *DONE)
    assert after.status == S.RUN_STATUS_FAILED, after
    assert "nothing to continue" in after.error and "run.input is required" in after.error
    assert not after.HasField("output") or not after.output.fields, after.output
    # No node ran again: a, b, c once each, by the first run.
    assert [line.split()[0] for line in record.read_text().splitlines()] == ["a", "b", "c"]


async def test_refusals_on_a_busy_thread_name_its_active_runs_with_their_status(
    agents: Stub, tmp_path: Path
) -> None:
    record, release = tmp_path / "record", tmp_path / "release"
    request = {"record": str(record), "release": str(release)}
    first = await create_run(agents, workflow="workflows/test-steps", input=request)
    await _token(agents, first.name, "B1")
    waiting = await create_run(
        agents,
        workflow="workflows/test-steps",
        thread=first.thread,
        input=request,
        multitask_strategy="enqueue",
    )
    # Deleting the thread: both runs named, each with its status.
    error = await rpc_error(agents.DeleteThread(S.DeleteThreadRequest(name=first.thread)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        f"{first.thread} has 2 active runs: {first.name} (RUNNING), "
        f"{waiting.name} (QUEUED behind {first.name}): cancel them first"
    )
    # A run without a strategy: refused naming the run that holds the thread.
    error = await rpc_error(
        create_run(agents, workflow="workflows/test-steps", thread=first.thread, input=request)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"already has an active run, {first.name} (RUNNING);" in (error.details() or "")
    assert "create the run with a multitask_strategy (enqueue" in (error.details() or "")
    release.touch()
    for run in (first, waiting):
        ended = await wait_status(agents, run.name, *DONE)
        assert ended.status == S.RUN_STATUS_COMPLETED, ended.error
