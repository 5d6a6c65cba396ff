"""CreateAndStreamRun: a run created and followed in one call (LangGraph Server's runs stream).
The first message is the run as created; then every event of the run once, in the log's order,
the same events StreamRun replays; a request_id used again streams the first run; a client that
goes away leaves the run running; refusals come before anything is created, NATS down too."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
from agents_helpers import (
    S,
    collect,
    create_run,
    rpc_error,
    serve_agents,
    tokens,
    types,
    wait_status,
)

from amelia.v1 import agents_pb2_grpc, events_pb2
from amelia_common.embedded import EmbeddedNats, free_port


def request(message: str, request_id: str = "", **run: Any) -> S.CreateAndStreamRunRequest:
    call = S.CreateAndStreamRunRequest(
        run=S.Run(workflow=run.pop("workflow", "workflows/echo"), **run), request_id=request_id
    )
    call.run.input.update({"message": message})
    return call


async def created_and_streamed(
    stub: agents_pb2_grpc.AgentServiceStub, call: S.CreateAndStreamRunRequest
) -> tuple[S.Run, list[events_pb2.Event]]:
    """The call's first message (the run) and every event after it, until the stream ends."""

    async def read() -> tuple[S.Run, list[events_pb2.Event]]:
        replies = stub.CreateAndStreamRun(call)
        first = await replies.read()
        assert first is not grpc.aio.EOF
        assert first.HasField("run") and not first.HasField("event") and not first.events
        events: list[events_pb2.Event] = []
        while (reply := await replies.read()) is not grpc.aio.EOF:
            assert not reply.HasField("run")
            events.extend(reply.events or (reply.event,))
        return first.run, events

    return await asyncio.wait_for(read(), 60)


async def test_the_run_comes_first_then_each_of_its_events_once_as_streamrun_replays_them(
    agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    words = "one two three four five six seven"
    for batched in (0, 64):
        call = request(words)
        call.max_events_per_message = batched
        run, events = await created_and_streamed(agents, call)
        assert run.name.startswith("runs/") and run.workflow == "workflows/echo"
        assert run.status in (S.RUN_STATUS_QUEUED, S.RUN_STATUS_RUNNING)
        assert types(events)[0] == "workflow.started" and types(events)[-1] == "run.completed"
        assert " ".join(t.strip() for t in tokens(events)) == words
        assert all(event.subject == run.name for event in events)
        replayed = await collect(agents, run.name)
        assert [e.id for e in events] == [e.id for e in replayed]
        assert [e.sequence for e in events] == sorted({e.sequence for e in events})
        done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
        assert done.output["message"] == words


async def test_a_request_id_used_again_streams_the_first_run_from_its_first_event(
    agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    key = f"stream-{uuid.uuid4()}"
    calls = [request("the same request", request_id=key) for _ in range(6)]
    results = await asyncio.gather(*(created_and_streamed(agents, call) for call in calls))
    names = {run.name for run, _ in results}
    assert len(names) == 1, names
    (name,) = names
    replayed = [e.id for e in await collect(agents, name)]
    for _, events in results:
        assert [e.id for e in events] == replayed
    run = (await agents.GetRun(S.GetRunRequest(name=name))).run
    assert len((await agents.ListRuns(S.ListRunsRequest(thread=run.thread))).runs) == 1
    # Another request under the same key is refused before any message, as CreateRun refuses it.
    other = request("another request", request_id=key)
    error = await rpc_error(created_and_streamed(agents, other))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error.details()
    assert name in error.details()


async def test_refusals_come_before_any_run_is_created(
    agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    missing = await rpc_error(created_and_streamed(agents, request("x", workflow="workflows/nope")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert "workflows/nope does not exist" in missing.details()
    # A thread busy with a run refuses a second one (multitask reject, the default).
    busy = await create_run(
        agents, workflow="workflows/echo", input={"message": "slow words here", "delay_ms": 2000}
    )
    second = request("second", thread=busy.thread)
    refused = await rpc_error(created_and_streamed(agents, second))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.details()
    await agents.CancelRun(S.CancelRunRequest(name=busy.name))
    await wait_status(agents, busy.name, S.RUN_STATUS_CANCELLED)
    runs = (await agents.ListRuns(S.ListRunsRequest(thread=busy.thread))).runs
    assert [r.name for r in runs] == [busy.name]


async def test_a_client_that_goes_away_leaves_the_run_running_and_streamrun_goes_on(
    agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    call = request("a b c d e f")
    call.run.input.update({"delay_ms": 300})
    replies = agents.CreateAndStreamRun(call)
    run = (await replies.read()).run
    seen: list[events_pb2.Event] = []
    while not any(e.type == "run.token" for e in seen):
        reply = await replies.read()
        seen.extend(reply.events or (reply.event,))
    replies.cancel()
    rest = await collect(agents, run.name, after=seen[-1].sequence)
    assert types(rest)[-1] == "run.completed"
    everything = await collect(agents, run.name)
    assert [e.id for e in seen + rest] == [e.id for e in everything]
    assert "".join(tokens(everything)).split() == ["a", "b", "c", "d", "e", "f"]


async def test_with_nats_down_the_call_is_unavailable_and_records_nothing(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    settings = infra.settings(
        EVENTS_ADDRESS=events_address,
        NATS_URL=nats.start(),
        AGENT_WORKERS=1,
        RUNS_QUEUE_STREAM=f"AMELIA_RUNS_STREAM_{uuid.uuid4().hex[:8]}",
    )
    try:
        async with serve_agents(settings) as stub:
            run, events = await created_and_streamed(stub, request("before"))
            assert types(events)[-1] == "run.completed"
            thread = (await stub.CreateThread(S.CreateThreadRequest())).thread
            await asyncio.to_thread(nats.stop)
            refused = await rpc_error(created_and_streamed(stub, request("x", thread=thread.name)))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused.details()
            assert "NATS" in refused.details()
            assert not (await stub.ListRuns(S.ListRunsRequest(thread=thread.name))).runs
            await asyncio.to_thread(nats.start)
            run, events = await created_and_streamed(stub, request("after", thread=thread.name))
            assert types(events)[-1] == "run.completed" and run.thread == thread.name
    finally:
        await asyncio.to_thread(nats.stop)
