"""What a LangGraph Server user does to threads and runs besides running them (QA s27b L13):
CreateThread with a chosen `thread_id` and `if_exists` (a retry makes no second thread, even
two at once), UpdateThread merging metadata (`PATCH /threads/{id}`), DeleteRun of an ended run
(its checkpoints and events stay). On the in-process agents service with real workers,
PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import grpc
import pytest
from agents_helpers import S, Stub, create_run, rpc_error, wait_status

from amelia_common.db import libpq_url
from amelia_common.eventlog import EventLog, StartAt
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

SLOW = "offline:echo?delay_ms=100"
LONG = " ".join(f"word{i}" for i in range(300))  # 30 s at 100 ms a token: cancelled long before


def create(thread_id: str = "", if_exists: str = "", **meta: Any) -> S.CreateThreadRequest:
    request = S.CreateThreadRequest(thread_id=thread_id, if_exists=if_exists)
    request.thread.metadata.update(meta)
    return request


def metadata(thread: S.Thread) -> dict[str, Any]:
    return dict(thread.metadata.items())


async def count_threads(stub: Stub, tag: str) -> int:
    request = S.CountThreadsRequest(metadata_filter={"tag": tag})
    return (await stub.CountThreads(request)).count


# CreateThread: a chosen id and if_exists ------------------------------------------------------


async def test_a_chosen_thread_id_names_the_thread_and_a_retry_raises_or_returns_it(
    agents: Stub,
) -> None:
    tid, tag = str(uuid.uuid4()), uuid.uuid4().hex
    made = (await agents.CreateThread(create(tid, tag=tag, v=1))).thread
    assert made.name == f"threads/{tid}"
    assert metadata(made) == {"tag": tag, "v": 1}

    # "raise" (the default, and when empty): ALREADY_EXISTS naming the thread.
    for way in ("", "raise"):
        error = await rpc_error(agents.CreateThread(create(tid, way, tag=tag, v=2)))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error.details() == (
            f'threads/{tid} already exists; if_exists "do_nothing" returns it as it is'
        )
    # "do_nothing": the thread as it is (its metadata untouched), with its runs counted.
    run = await create_run(
        agents, workflow="workflows/echo", thread=made.name, input={"message": "hi"}
    )
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    again = (await agents.CreateThread(create(tid, "do_nothing", tag=tag, v=3))).thread
    assert again.name == made.name
    assert metadata(again) == {"tag": tag, "v": 1}
    assert again.run_count == 1 and again.latest_run.name == run.name
    assert again.create_time == made.create_time
    assert await count_threads(agents, tag) == 1

    # thread.name chooses the id as thread_id does; both must agree.
    other = str(uuid.uuid4())
    by_name = S.CreateThreadRequest(thread=S.Thread(name=f"threads/{other}"))
    assert (await agents.CreateThread(by_name)).thread.name == f"threads/{other}"
    both = S.CreateThreadRequest(thread=S.Thread(name=f"threads/{other}"), thread_id=tid)
    error = await rpc_error(agents.CreateThread(both))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name different threads" in error.details()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (create(str(uuid.UUID(int=0xABC)).upper()), "must be a UUID, the uuid in its canonical"),
        (create(uuid.uuid4().hex), "must be a UUID, the uuid in its canonical form"),
        (create("my-thread"), "thread_id 'my-thread' must be a UUID"),
        (create(f"threads/{uuid.uuid4()}"), "must be a UUID"),
        (create(str(uuid.uuid4()), "replace"), "if_exists 'replace' must be one of: raise"),
        (
            S.CreateThreadRequest(thread=S.Thread(name="threads/x")),
            "thread.name: thread name 'threads/x' must be 'threads/<uuid>'",
        ),
    ],
)
async def test_a_bad_thread_id_or_if_exists_is_invalid_argument(
    agents: Stub, request_: S.CreateThreadRequest, message: str
) -> None:
    error = await rpc_error(agents.CreateThread(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


async def test_concurrent_creates_of_one_id_make_one_thread(agents: Stub) -> None:
    for way, tries in (("do_nothing", 12), ("raise", 12)):
        tid, tag = str(uuid.uuid4()), uuid.uuid4().hex
        calls = [agents.CreateThread(create(tid, way, tag=tag, n=i)) for i in range(tries)]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        made = [a.thread for a in answers if isinstance(a, S.CreateThreadResponse)]
        refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
        assert await count_threads(agents, tag) == 1
        if way == "do_nothing":
            assert len(made) == tries and not refused
            assert len({metadata(t)["n"] for t in made}) == 1  # all got the one thread
        else:
            assert len(made) == 1
            assert {e.code() for e in refused} == {grpc.StatusCode.ALREADY_EXISTS}
            assert len(refused) == tries - 1


async def test_a_create_behind_an_uncommitted_one_of_its_id_gets_that_thread(
    agents: Stub, agents_settings: Settings
) -> None:
    """The race made certain: another transaction has inserted the id and not committed. The
    CreateThread waits for it (no second row, no error from the primary key), then answers
    with the thread it committed."""
    db = await asyncpg.connect(libpq_url(agents_settings.DATABASE_URL))
    try:
        for way in ("do_nothing", "raise"):
            tid = uuid.uuid4()
            holder = db.transaction()
            await holder.start()
            await db.execute(
                "INSERT INTO threads (id, metadata, create_time, update_time) "
                """VALUES ($1, '{"by": "other"}', now(), now())""",
                tid,
            )
            me = await db.fetchval("SELECT pg_backend_pid()")
            call = asyncio.ensure_future(agents.CreateThread(create(str(tid), way, by="me")))
            async with asyncio.timeout(60):
                while not await db.fetchval(  # noqa: ASYNC110 - PostgreSQL's state
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    me,
                ):
                    await asyncio.sleep(0.05)
            assert not call.done()
            await holder.commit()
            if way == "do_nothing":
                thread = (await call).thread
                assert (thread.name, metadata(thread)) == (f"threads/{tid}", {"by": "other"})
            else:
                error = await rpc_error(call)
                assert error.code() == grpc.StatusCode.ALREADY_EXISTS
            rows = await db.fetchval("SELECT count(*) FROM threads WHERE id = $1", tid)
            assert rows == 1
    finally:
        await db.close()


# UpdateThread: metadata merged ----------------------------------------------------------------


def update(name: str, mask: list[str] | None = None, **meta: Any) -> S.UpdateThreadRequest:
    request = S.UpdateThreadRequest(thread=S.Thread(name=name), update_mask=mask or [])
    request.thread.metadata.update(meta)
    return request


async def test_update_thread_merges_metadata_and_removes_null_keys(agents: Stub) -> None:
    made = (await agents.CreateThread(create(a=1, b="keep", c=[1, 2]))).thread
    changed = (await agents.UpdateThread(update(made.name, a=2, c=None, d={"x": True}))).thread
    assert metadata(changed)["a"] == 2 and metadata(changed)["b"] == "keep"
    assert "c" not in metadata(changed)
    assert changed.metadata["d"]["x"] is True
    assert changed.update_time.ToDatetime() > made.update_time.ToDatetime()
    assert changed.create_time == made.create_time
    read = (await agents.GetThread(S.GetThreadRequest(name=made.name))).thread
    assert metadata(read).keys() == {"a", "b", "d"}
    # The mask names metadata as the proto or the JSON does (the same name here).
    masked = (await agents.UpdateThread(update(made.name, ["metadata"], e=5))).thread
    assert metadata(masked)["e"] == 5 and metadata(masked)["a"] == 2


async def test_concurrent_updates_of_a_thread_all_land(agents: Stub) -> None:
    made = (await agents.CreateThread(create())).thread
    keys = [f"k{i}" for i in range(12)]
    await asyncio.gather(*(agents.UpdateThread(update(made.name, **{k: 1})) for k in keys))
    read = (await agents.GetThread(S.GetThreadRequest(name=made.name))).thread
    assert sorted(metadata(read)) == sorted(keys)


async def test_update_thread_refuses_bad_input(agents: Stub) -> None:
    made = (await agents.CreateThread(create(a=1))).thread
    cases = [
        (update(made.name, ["preview"]), grpc.StatusCode.INVALID_ARGUMENT, "update_mask has"),
        (update("threads/nope"), grpc.StatusCode.INVALID_ARGUMENT, "must be 'threads/<uuid>'"),
        (
            update(f"threads/{uuid.uuid4()}", a=1),
            grpc.StatusCode.NOT_FOUND,
            "does not exist",
        ),
        (
            update(made.name, big="x" * 70_000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "thread.metadata is",
        ),
    ]
    for request, code, message in cases:
        error = await rpc_error(agents.UpdateThread(request))
        assert (error.code(), message in error.details()) == (code, True), error.details()
    # Each piece under the limit, the merge over it: refused, nothing changed.
    await agents.UpdateThread(update(made.name, one="x" * 40_000))
    error = await rpc_error(agents.UpdateThread(update(made.name, two="x" * 40_000)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "thread.metadata (merged) is" in error.details()
    read = (await agents.GetThread(S.GetThreadRequest(name=made.name))).thread
    assert sorted(metadata(read)) == ["a", "one"]


# DeleteRun ------------------------------------------------------------------------------------


async def log_types(settings: Settings, run_name: str) -> list[str]:
    """The types of the run's events in the event log."""
    nc = await connect_nats(settings, "test-deleted-run-events")
    try:
        async with EventLog(nc, settings, source="test").read(
            (), run_name, StartAt.after(0), follow=False
        ) as reader:
            return [event.type async for event in reader]
    finally:
        await nc.close()


async def test_delete_run_refuses_an_active_run_and_deletes_an_ended_one(
    agents: Stub, agents_settings: Settings
) -> None:
    done = await create_run(
        agents, workflow="workflows/chat", input={"message": "hello", "model": "offline:echo"}
    )
    await wait_status(agents, done.name, S.RUN_STATUS_COMPLETED)
    state = (await agents.GetThreadState(S.GetThreadStateRequest(thread=done.thread))).state

    busy = await create_run(
        agents,
        workflow="workflows/chat",
        thread=done.thread,
        input={"message": LONG, "model": SLOW},
    )
    await wait_status(agents, busy.name, S.RUN_STATUS_RUNNING)
    error = await rpc_error(agents.DeleteRun(S.DeleteRunRequest(name=busy.name)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith(f"{busy.name} is RUNNING: only an ended run")
    assert "cancel it first" in error.details()
    await agents.CancelRun(S.CancelRunRequest(name=busy.name))
    await wait_status(agents, busy.name, S.RUN_STATUS_CANCELLED)

    await agents.DeleteRun(S.DeleteRunRequest(name=done.name))
    error = await rpc_error(agents.GetRun(S.GetRunRequest(name=done.name)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(agents.DeleteRun(S.DeleteRunRequest(name=done.name)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await agents.ListRuns(S.ListRunsRequest(thread=done.thread))
    assert [r.name for r in listed.runs] == [busy.name]
    # As LangGraph: the thread's checkpoints stay (what the run wrote is still the state the
    # thread shows at that checkpoint), and its events stay in the log.
    kept = await agents.GetThreadState(
        S.GetThreadStateRequest(thread=done.thread, checkpoint=state.checkpoint)
    )
    assert kept.state.values == state.values
    events = await log_types(agents_settings, done.name)
    assert "workflow.started" in events and events[-1] == "run.completed"

    # A cancelled run is ended: it can go too, once its worker let it go.
    async with asyncio.timeout(60):
        while True:
            try:
                await agents.DeleteRun(S.DeleteRunRequest(name=busy.name))
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
                assert "its worker is still stopping it" in exc.details()
                await asyncio.sleep(0.1)
    thread = (await agents.GetThread(S.GetThreadRequest(name=done.thread))).thread
    assert thread.run_count == 0
    # No run left names the graph: the state is read from the checkpoints as they are (it was
    # empty, and the CLI and dashboard said "no run of this thread has started").
    left = (await agents.GetThreadState(S.GetThreadStateRequest(thread=done.thread))).state
    assert left.checkpoint and not left.next
    said = [m["content"] for m in left.values["messages"]]
    assert said[:2] == ["hello", "hello"], said  # the deleted run's exchange is still there
    assert left.run.startswith("runs/")
    history = await history_of(agents, done.thread)
    assert history[0].checkpoint == left.checkpoint
    assert state.checkpoint in [h.checkpoint for h in history]
    again = await agents.GetThreadState(
        S.GetThreadStateRequest(thread=done.thread, checkpoint=state.checkpoint)
    )
    assert again.state.values == state.values


async def test_delete_run_of_a_bad_name_is_invalid_argument(agents: Stub) -> None:
    error = await rpc_error(agents.DeleteRun(S.DeleteRunRequest(name="runs/NOPE")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be 'runs/<uuid>'" in error.details()


# CopyThread -----------------------------------------------------------------------------------


async def state_of(stub: Stub, thread: str) -> S.ThreadState:
    return (await stub.GetThreadState(S.GetThreadStateRequest(thread=thread))).state


async def history_of(stub: Stub, thread: str) -> list[S.ThreadState]:
    request = S.ListThreadHistoryRequest(parent=thread, page_size=1000)
    return list((await stub.ListThreadHistory(request)).states)


def chat_messages(state: S.ThreadState) -> list[str]:
    return [m["content"] for m in state.values["messages"]]


async def test_copy_thread_has_the_state_and_history_and_goes_on_alone(agents: Stub) -> None:
    source = (await agents.CreateThread(create(owner="ann"))).thread.name
    for message in ("first", "second"):
        run = await create_run(
            agents,
            workflow="workflows/chat",
            thread=source,
            input={"message": message, "model": "offline:echo"},
        )
        await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    before = await state_of(agents, source)
    assert len(chat_messages(before)) == 4

    copy = (await agents.CopyThread(S.CopyThreadRequest(name=source))).thread
    assert copy.name != source and copy.name.startswith("threads/")
    assert metadata(copy) == {"owner": "ann"}
    read = (await agents.GetThread(S.GetThreadRequest(name=copy.name))).thread
    assert (read.run_count, read.status) == (0, S.THREAD_STATUS_IDLE)
    copied = await state_of(agents, copy.name)
    assert copied.values == before.values and copied.checkpoint == before.checkpoint
    assert list(copied.next) == list(before.next)
    assert [(h.checkpoint, h.values) for h in await history_of(agents, copy.name)] == [
        (h.checkpoint, h.values) for h in await history_of(agents, source)
    ]

    # A run on the copy goes on from the copied conversation; the source does not move.
    run = await create_run(
        agents,
        workflow="workflows/chat",
        thread=copy.name,
        input={"message": "third", "model": "offline:echo"},
    )
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    after = chat_messages(await state_of(agents, copy.name))
    assert after[:4] == chat_messages(before) and after[4] == "third" and len(after) == 6
    assert (await state_of(agents, source)).values == before.values

    # Deleting the source leaves the copy whole.
    await agents.DeleteThread(S.DeleteThreadRequest(name=source))
    assert chat_messages(await state_of(agents, copy.name)) == after


async def test_copy_thread_of_a_thread_never_run_and_bad_names(agents: Stub) -> None:
    empty = (await agents.CreateThread(create(k="v"))).thread.name
    copy = (await agents.CopyThread(S.CopyThreadRequest(name=empty))).thread
    assert metadata(copy) == {"k": "v"} and copy.name != empty
    assert not (await state_of(agents, copy.name)).checkpoint
    error = await rpc_error(agents.CopyThread(S.CopyThreadRequest(name=f"threads/{uuid.uuid4()}")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "does not exist" in error.details()
    error = await rpc_error(agents.CopyThread(S.CopyThreadRequest(name="threads/NOPE")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_thread_copied_at_a_question_answers_it_apart(agents: Stub) -> None:
    """Branching at a question (LangGraph's copy, then a run without input on the copy): the
    copy asks the question again and takes its own answer; the source's run is still paused."""
    paused = await create_run(agents, workflow="workflows/test-ask", input={"question": "Ok?"})
    await wait_status(agents, paused.name, S.RUN_STATUS_PAUSED)
    copy = (await agents.CopyThread(S.CopyThreadRequest(name=paused.thread))).thread.name
    assert list((await state_of(agents, copy)).next) == list(
        (await state_of(agents, paused.thread)).next
    )

    request = S.CreateRunRequest(run=S.Run(thread=copy, workflow="workflows/test-ask"))
    branch = (await agents.CreateRun(request)).run
    asked = await wait_status(agents, branch.name, S.RUN_STATUS_PAUSED, S.RUN_STATUS_FAILED)
    assert asked.status == S.RUN_STATUS_PAUSED, asked.error
    for run, answer in ((branch, "no"), (paused, "yes")):
        resume = S.ResumeRunRequest(name=run.name)
        resume.answer.string_value = answer
        await agents.ResumeRun(resume)
        done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED)
        assert done.status == S.RUN_STATUS_COMPLETED, done.error
        assert dict(done.output.items()) == {"result": f"answer was {answer}"}
