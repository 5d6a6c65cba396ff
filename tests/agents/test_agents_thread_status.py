"""A thread's status and newest run, as LangGraph Server lists threads (`status`: idle, busy,
interrupted, error) — after the real transitions of its runs, on the in-process agents service
with real workers, PostgreSQL and NATS — and ListThreads' `status` filter, its pages and its
refusal of an unknown status."""

from __future__ import annotations

import uuid

import grpc
from agents_helpers import S, Stub, create_run, rpc_error, wait_status

SLOW = "offline:echo?delay_ms=100"
LONG = " ".join(f"word{i}" for i in range(300))  # 30 s at 100 ms a token: cancelled long before


async def tagged_thread(stub: Stub, tag: str) -> str:
    """A new thread with `metadata.suite = tag` (so a list can be narrowed to this test's)."""
    thread = S.Thread()
    thread.metadata.update({"suite": tag})
    return (await stub.CreateThread(S.CreateThreadRequest(thread=thread))).thread.name


async def thread_of(stub: Stub, name: str) -> S.Thread:
    return (await stub.GetThread(S.GetThreadRequest(name=name))).thread


def latest(thread: S.Thread) -> tuple[str, int]:
    return thread.latest_run.name, thread.latest_run.status


async def chat(stub: Stub, thread: str, model: str, strategy: str = "") -> S.Run:
    return await create_run(
        stub,
        workflow="workflows/chat",
        thread=thread,
        input={"message": LONG if model == SLOW else "hi", "model": model},
        multitask_strategy=strategy,
    )


async def test_a_thread_reads_busy_while_a_run_runs_or_waits_and_idle_once_cancelled(
    agents: Stub,
) -> None:
    name = await tagged_thread(agents, uuid.uuid4().hex)
    fresh = await thread_of(agents, name)
    assert fresh.status == S.THREAD_STATUS_IDLE and not fresh.HasField("latest_run")

    first = await chat(agents, name, SLOW)
    await wait_status(agents, first.name, S.RUN_STATUS_RUNNING)
    running = await thread_of(agents, name)
    assert running.status == S.THREAD_STATUS_BUSY
    assert latest(running) == (first.name, S.RUN_STATUS_RUNNING)

    # A run queued behind the thread's run: still busy, and the newest run is the waiting one.
    behind = await chat(agents, name, "offline:echo", "enqueue")
    assert behind.queued_behind == first.name
    waiting = await thread_of(agents, name)
    assert waiting.status == S.THREAD_STATUS_BUSY
    assert latest(waiting) == (behind.name, S.RUN_STATUS_QUEUED)

    await agents.CancelRun(S.CancelRunRequest(name=behind.name))
    await agents.CancelRun(S.CancelRunRequest(name=first.name))
    await wait_status(agents, first.name, S.RUN_STATUS_CANCELLED)
    await wait_status(agents, behind.name, S.RUN_STATUS_CANCELLED)
    ended = await thread_of(agents, name)
    assert ended.status == S.THREAD_STATUS_IDLE
    assert latest(ended) == (behind.name, S.RUN_STATUS_CANCELLED)
    assert ended.run_count == 2


async def test_a_paused_run_makes_its_thread_interrupted_until_answered(agents: Stub) -> None:
    asked = await create_run(agents, workflow="workflows/test-ask", input={"message": "q"})
    await wait_status(agents, asked.name, S.RUN_STATUS_PAUSED)
    paused = await thread_of(agents, asked.thread)
    assert paused.status == S.THREAD_STATUS_INTERRUPTED
    assert latest(paused) == (asked.name, S.RUN_STATUS_PAUSED)

    # A run waiting behind the question does not hide it: the thread waits for an answer.
    after = await chat(agents, asked.thread, "offline:echo", "enqueue")
    still = await thread_of(agents, asked.thread)
    assert still.status == S.THREAD_STATUS_INTERRUPTED
    assert latest(still) == (after.name, S.RUN_STATUS_QUEUED)

    answer = S.ResumeRunRequest(name=asked.name)
    answer.answer.string_value = "yes"
    await agents.ResumeRun(answer)
    await wait_status(agents, after.name, S.RUN_STATUS_COMPLETED)
    done = await thread_of(agents, asked.thread)
    assert done.status == S.THREAD_STATUS_IDLE
    assert latest(done) == (after.name, S.RUN_STATUS_COMPLETED)


async def test_a_failed_latest_run_is_an_error_until_a_run_succeeds(agents: Stub) -> None:
    failed = await chat(agents, "", "offline:fail:the model broke")
    await wait_status(agents, failed.name, S.RUN_STATUS_FAILED)
    broken = await thread_of(agents, failed.thread)
    assert broken.status == S.THREAD_STATUS_ERROR
    assert latest(broken) == (failed.name, S.RUN_STATUS_FAILED)

    again = await chat(agents, failed.thread, "offline:echo")
    await wait_status(agents, again.name, S.RUN_STATUS_COMPLETED)
    assert (await thread_of(agents, failed.thread)).status == S.THREAD_STATUS_IDLE


async def test_list_threads_by_status_pages_through_those_only(agents: Stub) -> None:
    tag = uuid.uuid4().hex
    names = [await tagged_thread(agents, tag) for _ in range(5)]
    failed = [await chat(agents, name, "offline:fail:no") for name in names[:3]]
    ok = await chat(agents, names[3], "offline:echo")
    for run in failed:
        await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    await wait_status(agents, ok.name, S.RUN_STATUS_COMPLETED)

    def request(status: str, token: str = "") -> S.ListThreadsRequest:
        return S.ListThreadsRequest(
            status=status, metadata_filter={"suite": tag}, page_size=2, page_token=token
        )

    first = await agents.ListThreads(request("error"))
    rest = await agents.ListThreads(request("error", first.next_page_token))
    assert len(first.threads) == 2 and first.next_page_token
    assert [t.name for t in [*first.threads, *rest.threads]] == names[:3]
    assert rest.next_page_token == ""
    assert {t.status for t in [*first.threads, *rest.threads]} == {S.THREAD_STATUS_ERROR}

    idle = await agents.ListThreads(
        S.ListThreadsRequest(status="IDLE", metadata_filter={"suite": tag})
    )
    assert [t.name for t in idle.threads] == names[3:]
    by_enum = S.ListThreadsRequest(status="THREAD_STATUS_IDLE", metadata_filter={"suite": tag})
    assert [t.name for t in (await agents.ListThreads(by_enum)).threads] == names[3:]
    busy = await agents.ListThreads(
        S.ListThreadsRequest(status="busy", metadata_filter={"suite": tag})
    )
    assert list(busy.threads) == []

    # A page token is for its own filter.
    other = await rpc_error(agents.ListThreads(request("idle", first.next_page_token)))
    assert other.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_unknown_status_is_refused_naming_the_allowed_ones(agents: Stub) -> None:
    error = await rpc_error(agents.ListThreads(S.ListThreadsRequest(status="sleeping")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "status 'sleeping' is not one of: idle, busy, interrupted, error"
