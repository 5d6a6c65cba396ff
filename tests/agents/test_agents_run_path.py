"""The run path's shortcuts keep its rules: a worker given a job before the CreateRun that queued
it has committed waits for exactly that commit (no guessed sleep, no job given back), and a
run's token usage, written in the background while its nodes go on, is all on the run when its
end is published."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import pytest
from agents_helpers import (
    S,
    collect,
    create_run,
    data,
    register_said_workflow,
    tokens,
    types,
    wait_status,
)
from langgraph.checkpoint.memory import InMemorySaver
from sqlalchemy import text

from amelia.v1 import agents_pb2_grpc, events_pb2
from amelia_agents import runtime, workflows
from amelia_agents.executor import CompiledGraphs
from amelia_agents.llm.offline import tokenize
from amelia_agents.models import RunRow, RunState
from amelia_agents.servicer import _new_run
from amelia_agents.store import RECORDING_LOCK_SPACE, Store
from amelia_agents.workflows.registry import linear_graph
from amelia_common.db import create_engine, session_factory
from amelia_common.settings import Settings

# A queue no worker or reconciler of the test session looks at.
NOBODYS_QUEUE = "AMELIA_RUNS_RECORDING_TEST"


def queued_run(settings: Settings) -> RunRow:
    """A QUEUED run of the echo workflow on a queue nobody serves, not recorded yet."""
    return _new_run(
        settings.model_copy(update={"RUNS_QUEUE_STREAM": NOBODYS_QUEUE}),
        agent_id=None,
        workflow="echo",
        thread_id=uuid.uuid4(),
        input_value={"message": "hello"},
        agent_config=None,
        timeout=None,
        request_id="",
    )


@pytest.fixture
async def store(agents: Any, agents_settings: Settings) -> AsyncIterator[Store]:
    """A store of its own on the session's database (the agents service migrated it)."""
    engine = create_engine(agents_settings)
    yield Store(session_factory(engine))
    await engine.dispose()


@contextlib.asynccontextmanager
async def recording(
    store: Store, settings: Settings
) -> AsyncIterator[tuple[RunRow, asyncio.Event]]:
    """A run CreateRun is recording (its job queued, its transaction open until the event is
    set); ended FAILED on the way out."""
    row = queued_run(settings)
    queued, commit = asyncio.Event(), asyncio.Event()

    async def queue_then_hold() -> None:
        queued.set()
        await commit.wait()

    creating = asyncio.create_task(store.create_run(row, True, before_commit=queue_then_hold))
    try:
        await queued.wait()
        yield row, commit
        commit.set()
        await creating
    finally:
        commit.set()
        await asyncio.gather(creating, return_exceptions=True)
        await store.finish(row.id, RunState.FAILED, error="test over")


async def recording_waiters(store: Store, deadline: float = 30.0, count: int = 1) -> int:
    """Sessions blocked on a run's recording lock, once there are `count` (or as many as there
    are at the deadline)."""
    until = time.monotonic() + deadline
    while True:
        async with store.engine.connect() as conn:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND classid = :space AND objsubid = 2"
                ),
                {"space": RECORDING_LOCK_SPACE},
            )
        if (waiting or 0) >= count or time.monotonic() > until:
            return int(waiting or 0)
        await asyncio.sleep(0.05)


async def test_a_worker_waits_for_the_create_run_still_recording_its_run(
    store: Store, agents_settings: Settings
) -> None:
    async with recording(store, agents_settings) as (row, commit):
        assert await store.claim(row.id, "test-worker") == (None, False)  # not visible yet
        assert await store.wait_until_recorded(row.id, 0.2) is False  # still being recorded
        waiting = asyncio.create_task(store.wait_until_recorded(row.id, 60))
        # A worker's run lock waits for the commit in the same statement (session 11).
        lock = store.run_lock(row.id)
        locking = asyncio.create_task(lock.acquire(recorded_within=60))
        try:
            assert await recording_waiters(store, count=2) == 2
            assert not waiting.done() and not locking.done()
            commit.set()
            assert await waiting is True
            assert await locking is True
            # The claim right after the lock finds the run: no claim that misses.
            claimed, won = await store.claim(row.id, "test-worker")
            assert won and claimed is not None and claimed.status == RunState.RUNNING.value
        finally:
            await asyncio.gather(locking, return_exceptions=True)
            await lock.release()


async def test_a_run_that_failed_recording_is_not_waited_for(
    store: Store, agents_settings: Settings
) -> None:
    row = queued_run(agents_settings)

    async def queue_refused() -> None:
        raise RuntimeError("the queue did not take it")

    creating = store.create_run(row, True, before_commit=queue_refused)
    assert await asyncio.gather(creating, return_exceptions=True) != [row]
    assert await store.wait_until_recorded(row.id, 60) is True
    assert await store.claim(row.id, "test-worker") == (None, False)


def register_calls_chain() -> str:
    """Three nodes, each calling the offline model twice."""
    name = "test-run-path-calls"

    async def step(state: CallsState) -> dict[str, Any]:
        texts = [
            (
                await runtime.chat(
                    [{"role": "user", "content": "go"}], model=f"offline:say:{reply}"
                )
            ).text
            for reply in ("one two three", "four five")
        ]
        return {"said": [*state.get("said", []), *texts]}

    return register_said_workflow(
        name,
        "test: six model calls over three nodes",
        linear_graph(CallsState, ("a", step), ("b", step), ("c", step)),
    )


class CallsState(TypedDict, total=False):
    said: list[str]


async def test_usage_of_every_model_call_is_on_the_run_its_end_tells_of(
    agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    # Usage is written in the background while the next node runs: all of it is stored before
    # the end, whose event tells the same figures as the run and as its nodes.
    run = await create_run(agents, workflow=f"workflows/{register_calls_chain()}", input={})
    events = await collect(agents, run.name)
    assert types(events)[-1] == "run.completed"
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["said"] == 6
    stored = {"input_tokens": done.usage.input_tokens, "output_tokens": done.usage.output_tokens}
    assert stored["output_tokens"] == 3 * len(["one", "two", "three", "four", "five"])
    assert data(events, "run.completed")[0]["usage"] == stored
    nodes = data(events, "run.node.finished")
    assert {
        key: sum(int(node[key]) for node in nodes) for key in ("input_tokens", "output_tokens")
    } == stored


class SaidState(TypedDict, total=False):
    said: list[str]


def register_saying(name: str, word: str, extra: dict[str, Any] | None = None) -> None:
    """`name`: one node that emits a `test.said` event with `word` (and `extra`) and says it."""

    async def say(state: SaidState) -> dict[str, Any]:
        runtime.emit("test.said", {"word": word, **(extra or {})})
        return {"said": [word]}

    workflows.register(
        workflows.Workflow(
            name=name,
            description="test: says one word",
            nodes=["say"],
            build=lambda _agent: linear_graph(SaidState, ("say", say)),
            to_state=lambda value: {"said": []},
            to_output=lambda state: {"said": state.get("said", [])},
            input_schema={"type": "object"},
        ),
        replace=True,
    )


async def test_a_workflow_registered_again_runs_its_new_graph(
    agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    # Workers compile a workflow's graph once, not per run: registering the workflow again
    # (what a redeployed worker or a test does) must still take effect at the next run.
    name = "test-run-path-version"

    async def said() -> list[str]:
        run = await create_run(agents, workflow=f"workflows/{name}", input={})
        done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
        return list(done.output["said"])

    register_saying(name, "first")
    assert await said() == ["first"]
    register_saying(name, "second")
    assert [await said(), await said()] == [["second"], ["second"]]


def test_compiled_graphs_are_kept_per_agent_configuration() -> None:
    graphs = CompiledGraphs(InMemorySaver(), size=2)
    register_saying("test-run-path-compiled", "x")
    workflow = workflows.get("test-run-path-compiled")
    assert workflow is not None
    first = graphs.compiled(workflow, {"model": "a"})
    assert graphs.compiled(workflow, {"model": "a"}) is first
    other = graphs.compiled(workflow, {"model": "b"})
    assert other is not first
    graphs.compiled(workflow, None)  # a third configuration: the oldest ({"model": "a"}) goes
    assert graphs.compiled(workflow, {"model": "b"}) is other
    assert graphs.compiled(workflow, {"model": "a"}) is not first


async def test_a_node_event_json_cannot_carry_fails_the_run_and_is_not_stored(
    agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    # The run's events are checked where their data is built (not again by the event log):
    # NaN from a node still fails the run, saying why, and reaches no reader.
    name = "test-run-path-nan"
    register_saying(name, "nan", {"value": float("nan")})
    run = await create_run(agents, workflow=f"workflows/{name}", input={})
    done = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    assert "event data must not contain NaN or Infinity" in done.error
    events = await collect(agents, run.name)
    assert "test.said" not in types(events)
    assert types(events)[-1] == "run.failed"


async def stream_run(
    stub: agents_pb2_grpc.AgentServiceStub, name: str, after: int = 0, per_message: int = 0
) -> list[list[events_pb2.Event]]:
    """StreamRun to its end: each message's events (one for a request without batches)."""

    async def read() -> list[list[events_pb2.Event]]:
        request = S.StreamRunRequest(
            name=name, after_sequence=after, max_events_per_message=per_message
        )
        messages = []
        async for response in stub.StreamRun(request):
            if per_message <= 1:
                assert not response.events, "a request without batches got several events"
                messages.append([response.event])
            else:
                assert not response.HasField("event") and 1 <= len(response.events) <= per_message
                messages.append(list(response.events))
        return messages

    return await asyncio.wait_for(read(), 60)


async def test_a_batched_stream_run_gives_every_event_once_in_order_every_token_alone(
    agents: agents_pb2_grpc.AgentServiceStub,
) -> None:
    # 300 tokens, each its own run.token event. Followed live with batches, replayed with and
    # without them, resumed from the middle: the same events, once each, in order.
    message = " ".join(f"w{i}" for i in range(300))
    run = await create_run(
        agents, workflow="workflows/chat", input={"message": message, "model": "offline:echo"}
    )
    live = [e for batch in await stream_run(agents, run.name, per_message=64) for e in batch]
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    one_by_one = [e for [e] in await stream_run(agents, run.name)]
    assert types(one_by_one)[-1] == "run.completed"
    assert tokens(one_by_one) == tokenize(message) and len(tokens(one_by_one)) == 300
    sequences = [e.sequence for e in one_by_one]
    assert sequences == sorted(set(sequences))
    assert live == one_by_one
    replayed = await stream_run(agents, run.name, per_message=64)
    assert max(len(batch) for batch in replayed) > 1  # a replay reads many events at once
    assert [e for batch in replayed for e in batch] == one_by_one
    middle = one_by_one[len(one_by_one) // 2].sequence
    resumed = await stream_run(agents, run.name, after=middle, per_message=2)
    assert [e for batch in resumed for e in batch] == [e for e in one_by_one if e.sequence > middle]
    after_end = await stream_run(agents, run.name, after=sequences[-1], per_message=64)
    assert after_end == []
