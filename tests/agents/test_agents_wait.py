"""WaitRun (LangGraph's runs wait/join): the call returns the run once it has ended or paused on
a question, with its output, error or interrupt; a bounded wait that runs out says so and leaves
the run alone, counting from the caller's start_time when it sends the wait again; a hundred
waiters on one run all get it. The runs are `test-stubborn`, whose node waits for its release
file: the test decides when the run ends, nothing is timed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
from agents_helpers import S, create_run, rpc_error, wait_status


def _stubborn(tmp_path: Path, name: str = "w") -> dict[str, Any]:
    return {
        "name": name,
        "record": str(tmp_path / "record"),
        "release": str(tmp_path / f"{name}.release"),
        "unwind": str(tmp_path / f"{name}.unwind"),
    }


def _let_go(request: dict[str, Any], what: str = "release") -> None:
    """Let the run's node go on (`release`), or stop at once when cancelled (`unwind`)."""
    Path(request[what]).touch()


def _wait(stub: Any, name: str, timeout: float | None = None) -> Any:
    request = S.WaitRunRequest(name=name)
    if timeout is not None:
        request.timeout.FromNanoseconds(int(timeout * 1e9))
    return stub.WaitRun(request)


async def test_wait_returns_the_run_with_its_output_once_it_ends(agents, tmp_path) -> None:
    request = _stubborn(tmp_path)
    run = await create_run(agents, workflow="workflows/test-stubborn", input=request)
    await wait_status(agents, run.name, S.RUN_STATUS_RUNNING)
    waiting = asyncio.ensure_future(_wait(agents, run.name))
    _let_go(request)
    done = (await asyncio.wait_for(waiting, 60)).run
    assert done.status == S.RUN_STATUS_COMPLETED
    assert done.output["result"] == "released then"
    # Joining a finished run answers at once with the same run.
    again = (await _wait(agents, run.name)).run
    assert again.status == S.RUN_STATUS_COMPLETED and again.output == done.output


async def test_wait_returns_a_failed_run_with_its_error(agents) -> None:
    run = await create_run(agents, workflow="workflows/test-raise", input={})
    done = (await _wait(agents, run.name)).run
    assert done.status == S.RUN_STATUS_FAILED
    assert done.error == "ValueError: boom in node"


async def test_wait_returns_a_paused_run_with_its_question(agents) -> None:
    run = await create_run(agents, workflow="workflows/test-ask", input={"question": "Ship it?"})
    paused = (await _wait(agents, run.name)).run
    assert paused.status == S.RUN_STATUS_PAUSED
    assert paused.interrupt.value.struct_value["question"] == "Ship it?"
    resume = S.ResumeRunRequest(name=run.name)
    resume.answer.string_value = "yes"
    await agents.ResumeRun(resume)
    done = (await _wait(agents, run.name)).run
    assert done.status == S.RUN_STATUS_COMPLETED
    assert done.output["result"] == "answer was yes"


async def test_a_wait_that_runs_out_says_so_and_leaves_the_run_running(agents, tmp_path) -> None:
    request = _stubborn(tmp_path)
    run = await create_run(agents, workflow="workflows/test-stubborn", input=request)
    await wait_status(agents, run.name, S.RUN_STATUS_RUNNING)
    error = await rpc_error(_wait(agents, run.name, timeout=0.5))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == (
        f"{run.name} is still RUNNING after 0.5 s of waiting (the run goes on; wait again, "
        "or follow it with StreamRun)"
    )
    # The call's own deadline, sooner than the timeout: our message, not gRPC's.
    error = await rpc_error(agents.WaitRun(S.WaitRunRequest(name=run.name), timeout=1.0))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "is still RUNNING after" in error.details()
    assert (await agents.GetRun(S.GetRunRequest(name=run.name))).run.status == (
        S.RUN_STATUS_RUNNING
    )
    _let_go(request)
    done = (await _wait(agents, run.name)).run
    assert done.status == S.RUN_STATUS_COMPLETED


async def test_a_wait_sent_again_counts_from_its_start_time(agents, tmp_path) -> None:
    """A caller sending its wait again (after a restart) gives the wait's start_time: the wait
    ends a timeout after it, not after this call, and says the caller's whole wait."""
    request = _stubborn(tmp_path)
    run = await create_run(agents, workflow="workflows/test-stubborn", input=request)
    await wait_status(agents, run.name, S.RUN_STATUS_RUNNING)
    again = S.WaitRunRequest(name=run.name)
    again.timeout.FromSeconds(60)
    again.start_time.FromNanoseconds(time.time_ns() - 59_500_000_000)  # 0.5 s left
    error = await rpc_error(agents.WaitRun(again, timeout=30))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == (
        f"{run.name} is still RUNNING after 60 s of waiting (the run goes on; wait again, "
        "or follow it with StreamRun)"
    )
    # A start_time after now, or before the whole timeout (a clock apart from the service's),
    # counts as now: the wait is the whole timeout.
    for skew in (3600, -3600):
        apart = S.WaitRunRequest(name=run.name)
        apart.timeout.FromNanoseconds(500_000_000)
        apart.start_time.FromSeconds(int(time.time()) + skew)
        started = time.monotonic()
        error = await rpc_error(agents.WaitRun(apart, timeout=30))
        assert "is still RUNNING after 0.5 s of waiting" in error.details()
        assert time.monotonic() - started >= 0.5
    _let_go(request)
    done = (await _wait(agents, run.name)).run
    assert done.status == S.RUN_STATUS_COMPLETED


async def test_a_hundred_waiters_on_one_run_all_get_it(agents, tmp_path) -> None:
    request = _stubborn(tmp_path)
    run = await create_run(agents, workflow="workflows/test-stubborn", input=request)
    await wait_status(agents, run.name, S.RUN_STATUS_RUNNING)
    waiters = [asyncio.ensure_future(_wait(agents, run.name)) for _ in range(100)]
    _let_go(request)
    answers = await asyncio.wait_for(asyncio.gather(*waiters), 120)
    assert {a.run.status for a in answers} == {S.RUN_STATUS_COMPLETED}
    assert {a.run.output["result"] for a in answers} == {"released then"}


async def test_a_cancelled_run_ends_the_wait(agents, tmp_path) -> None:
    request = _stubborn(tmp_path)
    _let_go(request, "unwind")  # cancelled, its node stops at once
    run = await create_run(agents, workflow="workflows/test-stubborn", input=request)
    await wait_status(agents, run.name, S.RUN_STATUS_RUNNING)
    waiting = asyncio.ensure_future(_wait(agents, run.name))
    await agents.CancelRun(S.CancelRunRequest(name=run.name, reason="not needed"))
    done = (await asyncio.wait_for(waiting, 60)).run
    assert done.status == S.RUN_STATUS_CANCELLED
    assert "not needed" in done.error


async def test_wait_refuses_a_missing_run_and_a_timeout_out_of_bounds(agents) -> None:
    missing = "runs/00000000-0000-4000-8000-000000000000"
    error = await rpc_error(_wait(agents, missing))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert missing in error.details()
    run = await create_run(agents, workflow="workflows/echo", input={"message": "hi"})
    for bad in (601.0, -1.0):
        error = await rpc_error(_wait(agents, run.name, timeout=bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "timeout must be more than 0 s and at most 600 s" in error.details()
    # A start_time protobuf cannot convert (the RPC fuzz found it a 500).
    for seconds, nanos in ((-(2**62), 0), (2**40, 0), (0, -5)):
        request = S.WaitRunRequest(name=run.name)
        request.start_time.seconds, request.start_time.nanos = seconds, nanos
        error = await rpc_error(agents.WaitRun(request, timeout=30))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "start_time is not a valid timestamp (0001-01-01 .. 9999-12-31)"
