"""What the dashboard needs from AgentService: run steps from the checkpoints, rerun, fork (time
travel), ListRuns' AIP-160 filter and order, threads with their run count and preview, and the
workflows' edges. All against the real services, PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from agents_helpers import (
    S,
    WorkerProcess,
    collect,
    create_run,
    data,
    rpc_error,
    serve_agents,
    types,
    wait_status,
)
from google.protobuf import json_format, struct_pb2

DONE = (S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED)


async def _steps_run(agents: Any, tmp_path: Path) -> tuple[S.Run, Path]:
    record, release = tmp_path / "record", tmp_path / "release"
    release.touch()
    run = await create_run(
        agents,
        workflow="workflows/test-steps",
        input={"record": str(record), "release": str(release)},
    )
    return await wait_status(agents, run.name, *DONE), record


async def _steps(agents: Any, name: str, **page: Any) -> S.ListRunStepsResponse:
    return await agents.ListRunSteps(S.ListRunStepsRequest(parent=name, **page))


def _plain(message: Any) -> Any:
    return json_format.MessageToDict(message)


async def test_steps_give_each_node_its_input_update_and_times(agents, tmp_path) -> None:
    run, _ = await _steps_run(agents, tmp_path)
    assert run.status == S.RUN_STATUS_COMPLETED
    steps = (await _steps(agents, run.name)).steps
    assert [s.node for s in steps] == ["a", "b", "c"]
    assert {s.state for s in steps} == {S.RUN_STEP_STATE_COMPLETED}
    assert [_plain(s.update) for s in steps] == [
        {"done": ["a"]},
        {"done": ["a", "b"]},
        {"done": ["a", "b", "c"]},
    ]
    # The input of a step is the state its node saw: what the step before wrote.
    assert _plain(steps[1].input)["done"] == ["a"]
    assert "done" not in _plain(steps[0].input)
    for step in steps:
        assert step.start_time.ToDatetime() <= step.end_time.ToDatetime()
    assert len({s.checkpoint for s in steps}) == 3
    # Pages of the same list, in order.
    first = await _steps(agents, run.name, page_size=2)
    rest = await _steps(agents, run.name, page_token=first.next_page_token)
    assert [s.node for s in [*first.steps, *rest.steps]] == ["a", "b", "c"]
    assert rest.next_page_token == ""


async def test_a_paused_run_shows_the_question_of_its_waiting_step(agents) -> None:
    run = await create_run(agents, workflow="workflows/test-ask", input={"question": "Ship it?"})
    await wait_status(agents, run.name, S.RUN_STATUS_PAUSED)
    steps = (await _steps(agents, run.name)).steps
    assert [s.node for s in steps] == ["ask"]
    assert steps[0].state == S.RUN_STEP_STATE_INTERRUPTED
    assert _plain(steps[0].interrupts[0].value) == {"question": "Ship it?"}
    refused = await rpc_error(
        agents.ForkRun(S.ForkRunRequest(name=run.name, checkpoint=steps[0].checkpoint))
    )
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    await agents.ResumeRun(
        S.ResumeRunRequest(name=run.name, answer=struct_pb2.Value(string_value="yes"))
    )
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    steps = (await _steps(agents, run.name)).steps
    assert [(s.node, s.state) for s in steps] == [
        ("ask", S.RUN_STEP_STATE_COMPLETED),
        ("finish", S.RUN_STEP_STATE_COMPLETED),
    ]
    assert _plain(steps[0].update) == {"answer": "yes"}


async def test_fork_continues_from_a_step_with_edited_state(agents, tmp_path) -> None:
    source, record = await _steps_run(agents, tmp_path)
    step_b = (await _steps(agents, source.name)).steps[1]
    values = S.ForkRunRequest().values
    values.update({"done": ["edited"]})
    key = str(uuid.uuid4())
    fork = (
        await agents.ForkRun(
            S.ForkRunRequest(
                name=source.name, checkpoint=step_b.checkpoint, values=values, request_id=key
            )
        )
    ).run
    assert fork.thread == source.thread and fork.name != source.name
    again = await agents.ForkRun(
        S.ForkRunRequest(
            name=source.name, checkpoint=step_b.checkpoint, values=values, request_id=key
        )
    )
    assert again.run.name == fork.name
    done = await wait_status(agents, fork.name, *DONE)
    assert done.status == S.RUN_STATUS_COMPLETED, done.error
    assert list(done.output["done"]) == ["edited", "b", "c"]
    # `a` ran once (in the source run); b and c ran again in the fork.
    assert [line.split()[0] for line in record.read_text().splitlines()] == [
        "a",
        "b",
        "c",
        "b",
        "c",
    ]
    assert [s.node for s in (await _steps(agents, fork.name)).steps] == ["b", "c"]
    # The fork starts like a run, naming where it came from: not a worker's redelivery.
    events = await collect(agents, fork.name)
    assert events[0].type == "workflow.started", types(events)
    assert data(events, "workflow.started")[0]["forked_from"] == {
        "run": source.name,
        "checkpoint": step_b.checkpoint,
    }
    assert "run.resumed" not in types(events)
    # The source's steps are untouched by the fork.
    assert [s.node for s in (await _steps(agents, source.name)).steps] == ["a", "b", "c"]

    # From the first step, with no edit: the whole graph again.
    first = (await _steps(agents, source.name)).steps[0]
    again = (
        await agents.ForkRun(S.ForkRunRequest(name=source.name, checkpoint=first.checkpoint))
    ).run
    again = await wait_status(agents, again.name, *DONE)
    assert list(again.output["done"]) == ["a", "b", "c"]

    # Not a checkpoint id at all: INVALID_ARGUMENT, as the thread-state calls say it (QA s20).
    garbage = await rpc_error(agents.ForkRun(S.ForkRunRequest(name=source.name, checkpoint="nope")))
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'nope' is not a checkpoint id: take one from ListRunSteps" in (garbage.details() or "")
    other = str(uuid.uuid4())
    missing = await rpc_error(agents.ForkRun(S.ForkRunRequest(name=source.name, checkpoint=other)))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert f"{source.name} has no step with checkpoint" in (missing.details() or "")
    assert "ListRunSteps" in (missing.details() or "")
    empty = await rpc_error(agents.ForkRun(S.ForkRunRequest(name=source.name)))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_rerun_runs_the_same_input_again(agents) -> None:
    word = f"rerun-{uuid.uuid4().hex[:8]}"
    run = await create_run(agents, workflow="workflows/echo", input={"message": f"say {word}"})
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    key = str(uuid.uuid4())
    rerun = (await agents.RerunRun(S.RerunRunRequest(name=run.name, request_id=key))).run
    same = (await agents.RerunRun(S.RerunRunRequest(name=run.name, request_id=key))).run
    assert same.name == rerun.name
    assert rerun.name != run.name and rerun.thread != run.thread
    assert rerun.workflow == "workflows/echo" and rerun.input["message"] == f"say {word}"
    done = await wait_status(agents, rerun.name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == f"say {word}"
    in_thread = (await agents.RerunRun(S.RerunRunRequest(name=run.name, thread=run.thread))).run
    assert in_thread.thread == run.thread
    await wait_status(agents, in_thread.name, S.RUN_STATUS_COMPLETED)
    gone = await rpc_error(agents.RerunRun(S.RerunRunRequest(name=f"runs/{uuid.uuid4()}")))
    assert gone.code() == grpc.StatusCode.NOT_FOUND


async def _names(agents: Any, filter: str, **request: Any) -> list[str]:
    response = await agents.ListRuns(S.ListRunsRequest(filter=filter, page_size=100, **request))
    return [r.name for r in response.runs]


async def test_list_runs_filter_and_order(agents) -> None:
    word = f"zebra{uuid.uuid4().hex[:8]}"
    runs = []
    for text in (f"{word} one", f"{word} two 100%_done", f"plain {word[::-1]}"):
        run = await create_run(agents, workflow="workflows/echo", input={"message": text})
        runs.append(await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED))
    failed = await create_run(agents, workflow="workflows/test-raise", input={"note": word})
    failed = await wait_status(agents, failed.name, S.RUN_STATUS_FAILED)
    one, two, plain = (r.name for r in runs)

    assert await _names(agents, word) == [failed.name, two, one]  # newest first
    assert await _names(agents, f'"{word.upper()}"', order_by="create_time") == [
        one,
        two,
        failed.name,
    ]
    assert await _names(agents, f'{word} status = COMPLETED workflow = "workflows/echo"') == [
        two,
        one,
    ]
    assert await _names(agents, f'{word} AND (status = FAILED OR input:"TWO")') == [
        failed.name,
        two,
    ]
    # AIP-160: OR binds tighter than AND.
    assert await _names(agents, f"{word} AND status = FAILED OR status = RUN_STATUS_COMPLETED") == [
        failed.name,
        two,
        one,
    ]
    assert await _names(agents, f"{word} NOT status = FAILED -input:two") == [one]
    assert await _names(agents, f'{word} error:"BOOM"') == [failed.name]
    assert await _names(agents, f'input:"{word} two 100%_done"') == [two]
    assert await _names(agents, f'input:"{word} two 100__done"') == []
    assert await _names(agents, f"{word} usage.output_tokens >= 2 attempt = 1") == [two, one]
    start = runs[0].create_time.ToJsonString()
    assert await _names(agents, f'{word} create_time > "{start}"') == [failed.name, two]
    assert plain not in await _names(agents, word)
    assert await _names(agents, '"\'; DROP TABLE runs; --"') == []
    page = await agents.ListRuns(S.ListRunsRequest(filter=word, page_size=2))
    rest = await agents.ListRuns(
        S.ListRunsRequest(filter=word, page_size=2, page_token=page.next_page_token)
    )
    assert [r.name for r in [*page.runs, *rest.runs]] == [failed.name, two, one]

    for bad, says in (
        ("colour = red", "unknown field 'colour'"),
        ("status = DONE", "status 'DONE'"),
        ("(status = FAILED", "never closed"),
        ("create_time > 2026-01-01T00:00:00Z", "in quotes as RFC 3339"),
        ('create_time > "yesterday"', "in quotes as RFC 3339"),
        ("status < FAILED", "takes = !="),
        ("attempt = many", "whole number"),
        ("status =", "ends too early"),
        ("'; DROP TABLE runs; --", "quote at 0 is never closed"),
        ("(" * 100 + "x" + ")" * 100, "nested"),
    ):
        error = await rpc_error(agents.ListRuns(S.ListRunsRequest(filter=bad)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert says in (error.details() or ""), (bad, error.details())
    error = await rpc_error(agents.ListRuns(S.ListRunsRequest(order_by="speed")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "create_time desc" in (error.details() or "")


async def _all_pages(agents: Any, filter: str, order_by: str) -> list[str]:
    """Every run, one per page, following the tokens."""
    names: list[str] = []
    token = ""
    while True:
        page = await agents.ListRuns(
            S.ListRunsRequest(filter=filter, order_by=order_by, page_size=1, page_token=token)
        )
        names += [r.name for r in page.runs]
        token = page.next_page_token
        if not token:
            return names


async def test_list_runs_by_duration_and_tokens_and_by_input_keys(agents, tmp_path) -> None:
    tag = f"tag{uuid.uuid4().hex[:8]}"
    (tmp_path / "go").touch()
    steps = {"record": str(tmp_path / "record"), "tag": tag}
    quick = await create_run(
        agents, workflow="workflows/test-steps", input={**steps, "release": str(tmp_path / "go")}
    )
    quick = await wait_status(agents, quick.name, S.RUN_STATUS_COMPLETED)
    # The slow run is released only once it has run longer than the quick one took.
    slow = await create_run(
        agents,
        workflow="workflows/test-steps",
        input={**steps, "release": str(tmp_path / "later"), "n": 3},
    )
    slow = await wait_status(agents, slow.name, S.RUN_STATUS_RUNNING)
    took = quick.duration.ToTimedelta().total_seconds()
    while (await agents.GetRunQueue(S.GetRunQueueRequest())).read_time.ToDatetime() <= (  # noqa: ASYNC110
        slow.start_time.ToDatetime() + timedelta(seconds=took + 0.2)
    ):
        await asyncio.sleep(0.1)
    (tmp_path / "later").touch()
    slow = await wait_status(agents, slow.name, S.RUN_STATUS_COMPLETED)
    paused = await create_run(
        agents, workflow="workflows/test-ask", input={"question": "?", "tag": tag, "n": "many"}
    )
    await wait_status(agents, paused.name, S.RUN_STATUS_PAUSED)
    assert slow.duration.ToTimedelta() > quick.duration.ToTimedelta()

    mine = f'input.tag = "{tag}"'
    # Unfinished runs (no duration) come last either way; pages follow the same order.
    assert await _names(agents, mine, order_by="duration desc") == [
        slow.name,
        quick.name,
        paused.name,
    ]
    assert await _all_pages(agents, mine, "duration") == [quick.name, slow.name, paused.name]
    assert await _all_pages(agents, mine, "duration desc") == [
        slow.name,
        quick.name,
        paused.name,
    ]
    # Tokens: echo's usage grows with its message.
    echoes = []
    for words in (3, 1, 6):
        run = await create_run(
            agents, workflow="workflows/echo", input={"message": " ".join([tag] * words)}
        )
        echoes.append(await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED))
    three, one, six = (r.name for r in echoes)
    totals = [r.usage.input_tokens + r.usage.output_tokens for r in echoes]
    assert totals[1] < totals[0] < totals[2], totals
    echoed = f"input.message : {tag}"
    assert await _all_pages(agents, echoed, "usage.total_tokens desc") == [six, three, one]
    assert await _all_pages(agents, echoed, "usage.total_tokens") == [one, three, six]

    # input.<key>: text equality, contains, numbers (a value that is not one never matches).
    assert await _names(agents, f"{mine} input.n > 2") == [slow.name]
    assert await _names(agents, f"{mine} input.n = 3") == [slow.name]
    assert await _names(agents, f'{mine} input.n : "MAN"') == [paused.name]
    assert await _names(agents, f"{mine} input.n != 3") == [paused.name, quick.name]
    assert await _names(agents, f"{mine} output.result : answer") == []
    assert await _names(agents, f'input.tag = "{tag}x"') == []

    for bad, says in (
        ("input. = 1", "is not input.<key>"),
        ("input.a;b = 1", "is not input.<key>"),
        ("input.n > many", "not a number"),
        ("input.n > NaN", "not a number"),
        ("colour = red", "input.<key>"),
    ):
        error = await rpc_error(agents.ListRuns(S.ListRunsRequest(filter=bad)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert says in (error.details() or ""), (bad, error.details())
    # A page token of one order is refused by another.
    first = await agents.ListRuns(S.ListRunsRequest(filter=mine, page_size=1))
    error = await rpc_error(
        agents.ListRuns(
            S.ListRunsRequest(
                filter=mine, order_by="duration", page_size=1, page_token=first.next_page_token
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    await agents.CancelRun(S.CancelRunRequest(name=paused.name))


async def test_threads_list_their_run_count_and_first_message(agents) -> None:
    word = f"thread-{uuid.uuid4().hex[:8]}"
    first = await create_run(
        agents, workflow="workflows/echo", input={"message": f"{word} " + "x" * 300}
    )
    await wait_status(agents, first.name, S.RUN_STATUS_COMPLETED)
    second = await create_run(
        agents, workflow="workflows/echo", input={"message": "again"}, thread=first.thread
    )
    await wait_status(agents, second.name, S.RUN_STATUS_COMPLETED)
    older = await create_run(agents, workflow="workflows/echo", input={"message": "other"})
    await wait_status(agents, older.name, S.RUN_STATUS_COMPLETED)
    third = await create_run(
        agents, workflow="workflows/echo", input={"message": "latest"}, thread=first.thread
    )
    await wait_status(agents, third.name, S.RUN_STATUS_COMPLETED)

    thread = (await agents.GetThread(S.GetThreadRequest(name=first.thread))).thread
    assert thread.run_count == 3
    assert thread.preview.startswith(word) and len(thread.preview) == 200
    recent = await agents.ListThreads(
        S.ListThreadsRequest(order_by="update_time desc", page_size=2)
    )
    assert [t.name for t in recent.threads] == [first.thread, older.thread]
    more = await agents.ListThreads(
        S.ListThreadsRequest(
            order_by="update_time  desc", page_size=2, page_token=recent.next_page_token
        )
    )
    assert first.thread not in [t.name for t in more.threads]
    bad = await rpc_error(agents.ListThreads(S.ListThreadsRequest(order_by="name")))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_workflows_carry_their_edges_with_branches_and_loops(agents) -> None:
    listed = (await agents.ListWorkflows(S.ListWorkflowsRequest())).workflows
    edges = {w.name: {(e.source, e.target, e.conditional) for e in w.edges} for w in listed}
    assert edges["workflows/echo"] == {("__start__", "echo", False), ("echo", "__end__", False)}
    plan = edges["workflows/plan"]
    assert ("design", "approval", False) in plan
    assert {
        ("approval", "approval", True),
        ("approval", "planning", True),
        ("approval", "__end__", True),
    } <= plan
    chat = edges["workflows/chat"]
    assert {("__start__", "retrieve", True), ("__start__", "respond", True)} <= chat


async def _queue_when(agents: Any, check: Any, timeout: float = 60) -> S.GetRunQueueResponse:
    """GetRunQueue once `check(response)` holds (the last response in the error if never)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await agents.GetRunQueue(S.GetRunQueueRequest())
        if check(found):
            return found
        assert asyncio.get_running_loop().time() < deadline, f"never: {found}"
        await asyncio.sleep(0.2)


def _lease(found: S.GetRunQueueResponse, run: str) -> S.RunLease | None:
    return next((lease for lease in found.in_flight if lease.run == run), None)


async def test_run_queue_shows_runs_in_flight_their_worker_heartbeat_and_the_waiting(
    agents, agents_settings, tmp_path
) -> None:
    # Three worker loops in the service: three runs that wait hold them all, a fourth waits.
    blocked = [
        await create_run(
            agents,
            workflow="workflows/test-steps",
            input={"record": str(tmp_path / "record"), "release": str(tmp_path / "release")},
        )
        for _ in range(3)
    ]
    waiting = await create_run(agents, workflow="workflows/test-ask", input={"question": "?"})
    found = await _queue_when(
        agents,
        lambda q: (
            all((lease := _lease(q, r.name)) and lease.held for r in blocked)
            and q.queued_runs >= 1
            and q.waiting_jobs >= 1
        ),
    )
    assert found.queue == agents_settings.RUNS_QUEUE_STREAM
    assert found.ack_wait.ToTimedelta().total_seconds() == agents_settings.RUN_ACK_WAIT_SECONDS
    assert found.in_flight_jobs >= 3
    assert found.HasField("oldest_queued_time")
    assert found.oldest_queued_age.ToTimedelta().total_seconds() >= 0
    lease = _lease(found, blocked[0].name)
    assert lease is not None
    assert lease.target == "workflows/test-steps"
    assert lease.attempt == 1
    process = f"{socket.gethostname()}:{os.getpid()}"
    assert lease.worker.startswith(f"{process}/")
    assert lease.lease_expire_time.ToDatetime() > lease.last_heartbeat_time.ToDatetime()
    worker = next(w for w in found.workers if w.name == process)
    assert worker.busy_loops >= 3 and worker.healthy
    # The heartbeat moves on while the run is held.
    first = lease.last_heartbeat_time.ToDatetime()
    await _queue_when(
        agents,
        lambda q: (
            (lease := _lease(q, blocked[0].name)) is not None
            and lease.last_heartbeat_time.ToDatetime() > first
        ),
    )
    (tmp_path / "release").touch()
    for run in blocked:
        await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    await wait_status(agents, waiting.name, S.RUN_STATUS_PAUSED)
    await agents.CancelRun(S.CancelRunRequest(name=waiting.name))
    after = await _queue_when(agents, lambda q: not any(_lease(q, r.name) for r in blocked))
    assert all(_lease(after, r.name) is None for r in [*blocked, waiting])


async def test_run_queue_shows_a_killed_workers_run_unheld_and_the_worker_stopped(
    infra, events_address, tmp_path
) -> None:
    settings = infra.settings(
        EVENTS_ADDRESS=events_address,
        AGENT_WORKERS=0,
        RUNS_QUEUE_STREAM=f"queue-view-{uuid.uuid4().hex[:8]}",
        RUN_ACK_WAIT_SECONDS=30,
        AGENT_WORKFLOW_MODULES=["agent_test_workflows"],
    )
    worker = WorkerProcess(
        settings,
        tmp_path / "worker.log",
        env={
            "RUNS_QUEUE_STREAM": settings.RUNS_QUEUE_STREAM,
            "RUN_ACK_WAIT_SECONDS": "30",
            "AGENT_WORKFLOW_MODULES": "agent_test_workflows",
        },
        pythonpath=[Path(__file__).parent],
    )
    async with serve_agents(settings) as agents:
        try:
            await worker.ready()
            record = tmp_path / "record"
            run = await create_run(
                agents,
                workflow="workflows/test-steps",
                input={"record": str(record), "release": str(tmp_path / "release")},
            )
            held = await _queue_when(agents, lambda q: (x := _lease(q, run.name)) and x.held)
            lease = _lease(held, run.name)
            assert lease is not None and lease.worker.split(":")[1].startswith(
                f"{worker.proc.pid}/"
            )
            assert [(w.busy_loops, w.healthy) for w in held.workers] == [(1, True)]
            worker.kill()
            gone = await _queue_when(agents, lambda q: (x := _lease(q, run.name)) and not x.held)
            lease = _lease(gone, run.name)
            assert lease is not None and not lease.HasField("last_heartbeat_time")
            assert [(w.name, w.busy_loops, w.healthy) for w in gone.workers] == [
                (lease.worker.rsplit("/", 1)[0], 0, False)
            ]
            await agents.CancelRun(S.CancelRunRequest(name=run.name))
        finally:
            await worker.stop()


async def test_a_finished_node_carries_its_model_tokens_and_no_cost_without_a_price(
    agents,
) -> None:
    run = await create_run(
        agents, workflow="workflows/chat", input={"message": "count me", "model": "offline:echo"}
    )
    run = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    finished = data(await collect(agents, run.name), "run.node.finished")
    used = [d for d in finished if "input_tokens" in d]
    assert used, finished
    assert sum(d["input_tokens"] for d in used) == run.usage.input_tokens
    assert sum(d["output_tokens"] for d in used) == run.usage.output_tokens
    assert all(d["models"] == ["offline:echo"] and "cost_usd" not in d for d in used)
