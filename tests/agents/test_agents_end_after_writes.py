"""A node's `run.node.finished` is published only once its writes are stored in PostgreSQL.

LangGraph hands a task's end to the stream while the task's writes are still on their way to
the checkpointer. The executor published the end at once, so it could be in the log while
PostgreSQL refused (or lost) the writes: the next pick-up found no writes, ran the node again,
and a client following the documented rule (docs/agents.md: on `run.resumed`, drop what the
interrupted node streamed since its `run.node.started`) had kept the node's text — it had
finished — and showed it twice, "A B1 B2 B1 B2 C". Now the end waits for the writes: an end in
the log means LangGraph will not run the node again.

The instant is arranged, not hoped for: once node b has streamed its text, a trigger on
`checkpoint_writes` holds b's writes (it waits for an advisory lock the test holds) and refuses
them once, as a database going away would. While they are held the test reads the log for b's
end for HOLD_SECONDS: the old executor published it at once (within milliseconds), the new one
cannot (it waits for the writes). Then the lock is let go; the refusal stops the pick-up, and
the next one runs b again (its writes were not stored).

With parallel nodes in one step (a fan-out), a node whose writes are held holds back what the
stream gave after its end — its sibling's tokens and end — so the log keeps the stream's order.
"""

from __future__ import annotations

import asyncio
import operator
import os
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from agents_helpers import S, collect, create_run, data, serve_agents, types, wait_status
from langgraph.graph import END, START, StateGraph
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from test_agents_durability import run_events
from test_agents_finished_told import (
    B_LAST,
    THEN_C,
    TextState,
    held_input,
    node_a,
    node_b,
    node_c,
    shown_text,
    stored_writes,
    thread_id,
    wait_for_token,
)
from test_agents_queue_faults import FINISHED, fault_settings

from amelia.v1 import events_pb2
from amelia_agents import runtime, workflows
from amelia_agents.workflows.registry import linear_graph
from amelia_common.db import create_engine
from amelia_common.eventlog import event_data
from amelia_common.settings import Settings

QUEUE = "AMELIA_RUNS_END_AFTER_WRITES"
# How long the test looks for b's end in the log while b's writes are held. The old executor
# published it within milliseconds of b's return; the new one cannot while they are held.
HOLD_SECONDS = 3.0

_HOLD = """
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({key});
    IF nextval('{name}') <= {refusals} THEN
        RAISE EXCEPTION 'the database is going away (test)' USING ERRCODE = '57P03';
    END IF;
    RETURN NEW;
END $$
"""
_TRIGGER = """
CREATE TRIGGER {name} BEFORE INSERT ON checkpoint_writes FOR EACH ROW
WHEN (NEW.thread_id = '{thread}' AND NEW.task_id = '{task}')
EXECUTE FUNCTION {name}()
"""
_WAITING = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted AND classid = 0 AND objid = :key AND objsubid = 1
"""


class HeldWrites:
    """A task's writes held in PostgreSQL: its INSERT waits for an advisory lock the test holds
    (`let_go`), then is refused `refusals` times."""

    def __init__(self, conn: AsyncConnection, key: int) -> None:
        self.conn = conn
        self.key = key
        self.held = True

    async def wait_waiting(self, timeout: float = 60) -> None:
        """Return once the task's INSERT waits for the lock (its writes are on their way)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not (await self.conn.execute(text(_WAITING), {"key": self.key})).scalar_one():
            assert asyncio.get_running_loop().time() < deadline, "the task's writes never came"
            await asyncio.sleep(0.02)

    async def let_go(self) -> None:
        if self.held:
            self.held = False
            await self.conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})


@asynccontextmanager
async def writes_held(
    settings: Settings, thread: str, task: str, refusals: int
) -> AsyncIterator[HeldWrites]:
    name = f"test_hold_writes_{uuid.uuid4().hex[:8]}"
    uuid.UUID(thread)  # (both are put in the statement)
    uuid.UUID(task)
    key = random.randrange(1, 2**31)
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            held = HeldWrites(conn, key)
            await conn.execute(text(f"CREATE SEQUENCE {name}"))
            await conn.execute(text(_HOLD.format(name=name, key=key, refusals=refusals)))
            await conn.execute(text(_TRIGGER.format(name=name, thread=thread, task=task)))
            try:
                yield held
            finally:
                await held.let_go()
                await conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON checkpoint_writes"))
                await conn.execute(text(f"DROP FUNCTION IF EXISTS {name}()"))
                await conn.execute(text(f"DROP SEQUENCE IF EXISTS {name}"))
    finally:
        await engine.dispose()


async def told_within(
    settings: Settings, run: str, seen: Any, seconds: float = HOLD_SECONDS
) -> list[events_pb2.Event]:
    """The run's events that `seen` picks, as soon as there is one, or none after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        found = [e for e in await run_events(settings, run) if seen(e)]
        if found or asyncio.get_running_loop().time() >= deadline:
            return found
        await asyncio.sleep(0.05)


async def wait_for_file(path: Path, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not path.exists():  # noqa: ASYNC240
        assert asyncio.get_running_loop().time() < deadline, f"no {path.name}"
        await asyncio.sleep(0.02)


async def started_task(settings: Settings, run: str, node: str, timeout: float = 60) -> str:
    """The task of `node`'s start in the run's log (waiting for it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (
        tasks := [
            d["task"]
            for d in data(await run_events(settings, run), "run.node.started")
            if d["node"] == node
        ]
    ):
        assert asyncio.get_running_loop().time() < deadline, f"{node} never started"
        await asyncio.sleep(0.05)
    (task,) = tasks
    return str(task)


def node_end(node: str) -> Any:
    return lambda e: e.type == "run.node.finished" and event_data(e).get("node") == node


def _b_in_a_subgraph(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    """a, then node b: a subgraph whose one node streams and waits as test_agents_finished_told's
    b does, then c."""
    inner = linear_graph(TextState, ("inner", node_b)).compile()
    return linear_graph(TextState, ("a", node_a), ("b", inner), ("c", node_c))


workflows.register(
    workflows.Workflow(
        name="test-end-after-writes-subgraph",
        description="test workflow: a, a subgraph b, c",
        nodes=["a", "b", "c"],
        build=_b_in_a_subgraph,
        to_state=lambda value: {"request": value, "text": ""},
        to_output=lambda state: {"message": state.get("text", "")},
        input_schema={"type": "object"},
    ),
    replace=True,
)
SUBGRAPH = "workflows/test-end-after-writes-subgraph"


@pytest.mark.parametrize(
    "workflow", [THEN_C, B_LAST, SUBGRAPH], ids=["then-c", "b-last", "b-a-subgraph"]
)
async def test_a_node_whose_writes_were_refused_was_never_told_finished(
    infra: Any, events_address: str, tmp_path: Path, workflow: str
) -> None:
    settings = fault_settings(infra, events_address, QUEUE, AGENT_WORKERS=1)
    async with serve_agents(settings) as api:
        run = await create_run(api, workflow=workflow, input=held_input(tmp_path))
        if workflow == SUBGRAPH:
            # (A subgraph's nodes stream into no event: the executor streams the graph's own.)
            await wait_for_file(tmp_path / "record")
        else:
            await wait_for_token(settings, run.name, "B2 ")
        b_task = await started_task(settings, run.name, "b")
        async with writes_held(settings, thread_id(run), b_task, refusals=1) as held:
            (tmp_path / "release").touch()  # b returns: its writes go to PostgreSQL, held
            await held.wait_waiting()
            told_while_held = await told_within(settings, run.name, node_end("b"))
            assert await stored_writes(settings, thread_id(run), b_task) == 0
            await held.let_go()  # b's writes are refused: the pick-up stops
            done = await wait_status(api, run.name, *FINISHED, timeout=90)
        events = await collect(api, run.name)  # StreamRun, as a client reads the run
    assert (S.RunStatus.Name(done.status), done.error) == ("RUN_STATUS_COMPLETED", "")
    expected = "A B1 B2 " if workflow == B_LAST else "A B1 B2 C"
    assert done.output["message"] == expected
    assert done.attempt == 2, "b's writes were refused once: a second pick-up"
    kinds = types(events)
    if workflow == SUBGRAPH:
        # b ran again, but its subgraph continued from its own checkpoint: its node had
        # finished there.
        assert (tmp_path / "record").read_text() == "b\n"
    else:
        assert (tmp_path / "record").read_text() == "b\nb\n", "b ran again: its writes were lost"
        # Each node's text once (before: "A B1 B2 B1 B2 C", b's first text kept as finished).
        assert shown_text(events) == done.output["message"], kinds
    assert told_while_held == [], "b's end was published while its writes were not stored"
    finished = data(events, "run.node.finished")
    assert [(d["node"], d["attempt"]) for d in finished if d["node"] == "b"] == [("b", 2)], kinds
    assert not any(d.get("recovered") for d in finished)
    resumed_at = kinds.index("run.resumed")
    assert [e for e in events[:resumed_at] if node_end("b")(e)] == [], kinds
    assert data(events, "run.resumed") == [{"run": run.name, "attempt": 2, "reason": "redelivered"}]


class FanState(TypedDict, total=False):
    request: dict[str, Any]
    text: Annotated[str, operator.add]


async def fan_a(state: FanState) -> dict[str, Any]:
    runtime.emit("run.token", {"text": "A "})
    return {"text": "A "}


async def fan_b(state: FanState) -> dict[str, Any]:
    """Streams its text, then waits for the `release` file."""
    request = state["request"]
    runtime.emit("run.token", {"text": "B1 "})
    runtime.emit("run.token", {"text": "B2 "})
    while not os.path.exists(request["release"]):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.02)
    return {"text": "B1 B2 "}


async def fan_c(state: FanState) -> dict[str, Any]:
    """Waits for the `release-c` file, then streams its text and says it returned."""
    request = state["request"]
    while not os.path.exists(request["release"] + "-c"):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.02)
    runtime.emit("run.token", {"text": "C1 "})
    Path(request["record"]).write_text("c returned\n")  # noqa: ASYNC240
    return {"text": "C1 "}


async def fan_d(state: FanState) -> dict[str, Any]:
    runtime.emit("run.token", {"text": "D"})
    return {"text": "D"}


def _fan_out(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    graph = StateGraph(FanState)
    for name, node in (("a", fan_a), ("b", fan_b), ("c", fan_c), ("d", fan_d)):
        graph.add_node(name, node)
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("a", "c")
    graph.add_edge(["b", "c"], "d")
    graph.add_edge("d", END)
    return graph


workflows.register(
    workflows.Workflow(
        name="test-end-after-writes-fan-out",
        description="test workflow: a, then b and c in one step, then d",
        nodes=["a", "b", "c", "d"],
        build=_fan_out,
        to_state=lambda value: {"request": value, "text": ""},
        to_output=lambda state: {"message": state.get("text", "")},
        input_schema={"type": "object"},
    ),
    replace=True,
)
FAN_OUT = "workflows/test-end-after-writes-fan-out"


async def test_a_parallel_node_whose_writes_are_held_holds_back_what_came_after_its_end(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    """b and c run in one step. b returns and its writes are held; c then streams and
    returns. Neither b's end nor anything of c after it reaches the log until b's writes are
    stored; then all of it does, in the stream's order, in one pick-up."""
    settings = fault_settings(infra, events_address, QUEUE, AGENT_WORKERS=1)
    async with serve_agents(settings) as api:
        run = await create_run(api, workflow=FAN_OUT, input=held_input(tmp_path))
        await wait_for_token(settings, run.name, "B2 ")
        b_task = await started_task(settings, run.name, "b")
        async with writes_held(settings, thread_id(run), b_task, refusals=0) as held:
            (tmp_path / "release").touch()
            await held.wait_waiting()
            (tmp_path / "release-c").touch()  # c streams and returns while b's writes wait
            await wait_for_file(tmp_path / "record")

            def after_b(e: events_pb2.Event) -> bool:
                told = event_data(e)
                return (e.type == "run.node.finished" and told.get("node") in ("b", "c")) or (
                    e.type == "run.token" and told.get("text") == "C1 "
                )

            told_while_held = await told_within(settings, run.name, after_b)
            await held.let_go()
            done = await wait_status(api, run.name, *FINISHED, timeout=90)
        events = await collect(api, run.name)
    assert (S.RunStatus.Name(done.status), done.error) == ("RUN_STATUS_COMPLETED", "")
    assert done.attempt == 1
    assert done.output["message"] == "A B1 B2 C1 D"
    assert told_while_held == [], [e.type for e in told_while_held]
    # The log keeps the stream's order: b's end, then c's token and end, then d.
    said = [
        (e.type, event_data(e).get("node"))
        for e in events
        if e.type in ("run.node.started", "run.node.finished", "run.token")
    ]
    assert said == [
        ("run.node.started", "a"),
        ("run.token", "a"),
        ("run.node.finished", "a"),
        ("run.node.started", "b"),
        ("run.node.started", "c"),
        ("run.token", "b"),
        ("run.token", "b"),
        ("run.node.finished", "b"),
        ("run.token", "c"),
        ("run.node.finished", "c"),
        ("run.node.started", "d"),
        ("run.token", "d"),
        ("run.node.finished", "d"),
    ], said
    assert shown_text(events) == done.output["message"]
