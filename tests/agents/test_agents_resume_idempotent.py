"""ResumeRun is idempotent by `request_id` (QA: six identical concurrent answers got one 200 and
five FAILED_PRECONDITION "is RUNNING, not PAUSED": a client retrying after a lost response got an
error though its answer was taken). Same id → the run back, every time, and the answer is used
once; the same id with another answer → ALREADY_EXISTS; a retry of the first answer once the run
paused again on its next question does not answer that one; without an id, as before."""

from __future__ import annotations

import asyncio
import uuid

import grpc
from agents_helpers import S, create_run, rpc_error, wait_status
from google.protobuf import struct_pb2


def _resume(agents, name: str, text: str, request_id: str = ""):
    """The ResumeRun call (await it, or hand it to `rpc_error`)."""
    answer = struct_pb2.Value(string_value=text)
    return agents.ResumeRun(S.ResumeRunRequest(name=name, answer=answer, request_id=request_id))


async def test_concurrent_and_retried_answers_with_one_request_id_answer_once(agents) -> None:
    run = await create_run(agents, workflow="workflows/test-ask-twice", input={})
    await wait_status(agents, run.name, S.RUN_STATUS_PAUSED)
    first = f"answer-{uuid.uuid4()}"
    replies = await asyncio.gather(*[_resume(agents, run.name, "one", first) for _ in range(6)])
    assert {r.run.name for r in replies} == {run.name}

    # The run goes on to its second question; the first answer's retry does not answer it.
    await wait_status(agents, run.name, S.RUN_STATUS_PAUSED)
    again = await _resume(agents, run.name, "one", first)
    assert again.run.status == S.RUN_STATUS_PAUSED
    other = await rpc_error(_resume(agents, run.name, "two", first))
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already answered" in (other.details() or "")

    second = f"answer-{uuid.uuid4()}"
    await _resume(agents, run.name, "two", second)
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["result"] == "one,two"
    retried = await _resume(agents, run.name, "two", second)
    assert retried.run.status == S.RUN_STATUS_COMPLETED

    # Without a request_id an answer to a run that is not PAUSED is refused, as before.
    refused = await rpc_error(_resume(agents, run.name, "three"))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "can be retried with it" in (refused.details() or "")
