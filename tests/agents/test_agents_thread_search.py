"""ListThreads and CountThreads as LangGraph Server's `POST /threads/search` and `/threads/count`
are used by Studio: a status filter paging through threads while they change status, the sort
orders, the count over all pages, and the refusal of a bad filter or sort — against real runs
(in-process agents service, real workers, PostgreSQL and NATS)."""

from __future__ import annotations

import uuid

import grpc
from agents_helpers import S, Stub, create_run, rpc_error, wait_status
from test_agents_thread_status import chat, tagged_thread

SLOW = "offline:echo?delay_ms=100"


async def asked(stub: Stub, thread: str) -> S.Run:
    """A run of `thread` paused on its question: the thread is interrupted."""
    run = await create_run(
        stub, workflow="workflows/test-ask", thread=thread, input={"message": "q"}
    )
    return await wait_status(stub, run.name, S.RUN_STATUS_PAUSED)


async def answered(stub: Stub, run: S.Run) -> None:
    """The question answered and the run completed: its thread is idle again."""
    answer = S.ResumeRunRequest(name=run.name)
    answer.answer.string_value = "yes"
    await stub.ResumeRun(answer)
    await wait_status(stub, run.name, S.RUN_STATUS_COMPLETED)


async def count(stub: Stub, tag: str, status: str = "") -> int:
    request = S.CountThreadsRequest(metadata_filter={"suite": tag}, status=status)
    return int((await stub.CountThreads(request)).count)


async def test_interrupted_threads_page_once_each_while_others_are_answered(agents: Stub) -> None:
    tag = uuid.uuid4().hex
    names = [await tagged_thread(agents, tag) for _ in range(6)]
    runs = [await asked(agents, name) for name in names[:5]]  # names[5]: no run, idle
    assert await count(agents, tag, "interrupted") == 5
    assert await count(agents, tag) == 6 and await count(agents, tag, "idle") == 1

    def page(token: str = "") -> S.ListThreadsRequest:
        return S.ListThreadsRequest(
            status="interrupted", metadata_filter={"suite": tag}, page_size=2, page_token=token
        )

    first = await agents.ListThreads(page())
    assert [t.name for t in first.threads] == names[:2]
    # Between pages: one thread already listed and one not listed yet leave the status.
    await answered(agents, runs[0])
    await answered(agents, runs[3])
    seen = [t.name for t in first.threads]
    token = first.next_page_token
    while token:
        reply = await agents.ListThreads(page(token))
        assert all(t.status == S.THREAD_STATUS_INTERRUPTED for t in reply.threads)
        seen += [t.name for t in reply.threads]
        token = reply.next_page_token
    # No thread twice, none that stayed interrupted skipped, the answered one not listed.
    assert seen == [names[0], names[1], names[2], names[4]]
    assert await count(agents, tag, "interrupted") == 3
    assert await count(agents, tag, "idle") == 3
    assert await count(agents, tag, "busy") == 0 and await count(agents, tag, "error") == 0


async def test_busy_threads_are_found_and_counted_among_idle_ones(agents: Stub) -> None:
    tag = uuid.uuid4().hex
    names = [await tagged_thread(agents, tag) for _ in range(4)]
    running = await chat(agents, names[1], SLOW)
    await wait_status(agents, running.name, S.RUN_STATUS_RUNNING)
    behind = await chat(agents, names[1], "offline:echo", "enqueue")
    busy = S.ListThreadsRequest(status="busy", metadata_filter={"suite": tag})
    assert [t.name for t in (await agents.ListThreads(busy)).threads] == [names[1]]
    assert await count(agents, tag, "busy") == 1
    # Its runs cancelled: the thread leaves the busy list.
    await agents.CancelRun(S.CancelRunRequest(name=behind.name))
    await agents.CancelRun(S.CancelRunRequest(name=running.name))
    await wait_status(agents, running.name, S.RUN_STATUS_CANCELLED)
    assert list((await agents.ListThreads(busy)).threads) == []
    assert await count(agents, tag, "busy") == 0 and await count(agents, tag, "idle") == 4


async def test_sort_orders_newest_oldest_and_most_recently_active(agents: Stub) -> None:
    tag = uuid.uuid4().hex
    names = [await tagged_thread(agents, tag) for _ in range(3)]
    # A run on the oldest thread makes it the most recently active.
    run = await chat(agents, names[0], "offline:echo")
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)

    async def listed(order_by: str) -> list[str]:
        request = S.ListThreadsRequest(order_by=order_by, metadata_filter={"suite": tag})
        return [t.name for t in (await agents.ListThreads(request)).threads]

    assert await listed("") == names
    assert await listed("create_time") == names
    assert await listed("create_time desc") == names[::-1]
    assert await listed("update_time desc") == [names[0], names[2], names[1]]
    assert await listed("update_time") == [names[1], names[2], names[0]]


async def test_a_bad_sort_status_or_filter_is_refused_naming_what_is_allowed(
    agents: Stub,
) -> None:
    error = await rpc_error(agents.ListThreads(S.ListThreadsRequest(order_by="status")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "order_by must be one of: create_time, create_time desc, update_time, update_time desc"
    )
    error = await rpc_error(agents.CountThreads(S.CountThreadsRequest(status="asleep")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "status 'asleep' is not one of: idle, busy, interrupted, error"
    error = await rpc_error(agents.CountThreads(S.CountThreadsRequest(metadata_filter={"": "x"})))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata_filter key" in error.details()
    # A filter of more keys than any thread could match is refused at once, not sent to
    # PostgreSQL (30,000 keys were its 32,767 parameters: 15 s, then a misleading UNAVAILABLE).
    many = {f"k{i}": "1" for i in range(30_000)}
    for call in (
        agents.CountThreads(S.CountThreadsRequest(metadata_filter=many)),
        agents.ListThreads(S.ListThreadsRequest(metadata_filter=many)),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            error.details()
            == "metadata_filter has 30000 keys; at most 256 (a thread must match each)"
        )
