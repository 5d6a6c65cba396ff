"""A node whose result is stored but whose `run.node.finished` never reached the log is told
finished by the next pick-up, before its `run.resumed`.

A node's writes are stored once every event before them (its start, its tokens) is in the log,
and its `run.node.finished` is published after them. A pick-up that lost NATS between the two
left a node LangGraph does not run again on the next pick-up, while a client following the
documented rule (docs/agents.md: on `run.resumed`, drop what the interrupted node streamed since
its `run.node.started`) dropped its whole text: `amelia run` showed "A C" of "A B1 B2 C". Now
the next pick-up publishes the missing end (`recovered`) first, and the client keeps the text.

The instant is arranged, not hoped for: node b streams its text, then waits for a file; once
its tokens are in the log the test's own NATS refuses every new event (its stream is made full,
discard new), and b is let go. Its writes go to PostgreSQL (nothing of the pick-up is left
unacknowledged), its `run.node.finished` is refused; the pick-up stops for the outage, and once
the run is picked up again (attempt 2) the stream takes events again.

The common case — the end is in the log, the pick-up stopped before the next checkpoint (here
PostgreSQL refuses that checkpoint once, as a database going away would) — tells nothing twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict

import pytest
from agents_helpers import S, collect, create_run, data, serve_agents, types, wait_status
from langgraph.graph import StateGraph
from nats.js import api as js_api
from sqlalchemy import text
from test_agents_durability import run_events
from test_agents_queue_faults import FINISHED, fault_settings

from amelia.v1 import events_pb2
from amelia_agents import runtime, workflows
from amelia_agents.workflows.registry import linear_graph
from amelia_common.db import create_engine
from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.eventlog import event_data
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

QUEUE = "AMELIA_RUNS_FINISHED_TOLD"
# A refused event is given up on after this long (the pick-up then stops for the outage).
PUBLISH_TIMEOUT = 3.0


class TextState(TypedDict, total=False):
    request: dict[str, Any]
    text: str


async def node_a(state: TextState) -> dict[str, Any]:
    runtime.emit("run.token", {"text": "A "})
    return {"text": state.get("text", "") + "A "}


def _record(request: dict[str, Any], node: str) -> None:
    with Path(request["record"]).open("a") as record:
        record.write(f"{node}\n")


async def node_b(state: TextState) -> dict[str, Any]:
    """Streams its whole text, then waits for the `release` file before it returns."""
    request = state["request"]
    _record(request, "b")
    runtime.emit("run.token", {"text": "B1 "})
    runtime.emit("run.token", {"text": "B2 "})
    while not os.path.exists(request["release"]):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.05)
    return {"text": state.get("text", "") + "B1 B2 "}


async def node_c(state: TextState) -> dict[str, Any]:
    runtime.emit("run.token", {"text": "C"})
    return {"text": state.get("text", "") + "C"}


def _register(name: str, *nodes: tuple[str, Any]) -> str:
    def build(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
        return linear_graph(TextState, *nodes)

    workflows.register(
        workflows.Workflow(
            name=name,
            description=f"test workflow {name}",
            nodes=[node for node, _ in nodes],
            build=build,
            to_state=lambda value: {"request": value, "text": ""},
            to_output=lambda state: {"message": state.get("text", "")},
            input_schema={"type": "object"},
        ),
        replace=True,
    )
    return f"workflows/{name}"


# b in the middle (the next pick-up continues with c), or b last (it only records the end).
THEN_C = _register("test-finished-told", ("a", node_a), ("b", node_b), ("c", node_c))
B_LAST = _register("test-finished-told-last", ("a", node_a), ("b", node_b))


def shown_text(events: list[events_pb2.Event]) -> str:
    """The text a client following docs/agents.md shows: every token as it comes, except that
    on a `run.resumed` (not an answer) what the node the run was in streamed since its
    `run.node.started` is dropped (it runs again and streams it again)."""
    shown: list[str] = []
    running: tuple[str, int] | None = None  # the node not finished, where its text starts
    for event in events:
        values = event_data(event)
        if event.type == "run.node.started":
            running = (str(values.get("node")), len(shown))
        elif event.type == "run.node.finished" and running and values.get("node") == running[0]:
            running = None
        elif event.type == "run.token":
            shown.append(str(values.get("text", "")))
        elif event.type == "run.resumed" and values.get("reason") not in (None, "", "answer"):
            if running is not None:
                del shown[running[1] :]
            running = None
    return "".join(shown)


def held_input(tmp_path: Path) -> dict[str, str]:
    return {"release": str(tmp_path / "release"), "record": str(tmp_path / "record")}


async def wait_for_token(settings: Settings, run: str, token: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while token not in [
        event_data(e).get("text") for e in await run_events(settings, run) if e.type == "run.token"
    ]:
        assert asyncio.get_running_loop().time() < deadline, f"no token {token!r} in the log"
        await asyncio.sleep(0.05)


async def wait_attempt(api: Any, run: str, attempt: int, timeout: float = 60) -> S.Run:
    deadline = asyncio.get_running_loop().time() + timeout
    while (found := (await api.GetRun(S.GetRunRequest(name=run))).run).attempt < attempt:
        assert asyncio.get_running_loop().time() < deadline, f"{run} stayed at {found.attempt}"
        await asyncio.sleep(0.05)
    return found


@asynccontextmanager
async def log_full(settings: Settings) -> AsyncIterator[None]:
    """The events stream takes no new event (full, discard new: JetStream answers "maximum
    messages exceeded"); as it was on the way out."""
    nc = await connect_nats(settings, "test-log-full")
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.EVENTS_STREAM)
        before = info.config
        await js.update_stream(
            dataclasses.replace(
                before, max_msgs=info.state.messages, discard=js_api.DiscardPolicy.NEW
            )
        )
        try:
            yield
        finally:
            await js.update_stream(before)
    finally:
        await nc.drain()


async def stored_writes(settings: Settings, thread: str, task: str) -> int:
    """How many checkpoint writes of `task` the thread has in PostgreSQL."""
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(
                text(
                    "SELECT count(*) FROM checkpoint_writes"
                    " WHERE thread_id = :thread AND task_id = :task"
                ),
                {"thread": thread, "task": task},
            )
            return int(found.scalar_one())
    finally:
        await engine.dispose()


def thread_id(run: S.Run) -> str:
    return run.thread.removeprefix("threads/")


@pytest.mark.parametrize("workflow", [THEN_C, B_LAST], ids=["then-c", "b-last"])
async def test_a_node_whose_end_never_reached_the_log_is_told_finished_before_the_resume(
    infra: Any, events_address: str, tmp_path: Path, workflow: str
) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    settings = fault_settings(
        infra,
        events_address,
        QUEUE,
        NATS_URL=nats.start(),
        AGENT_WORKERS=1,
        EVENTS_PUBLISH_TIMEOUT_SECONDS=PUBLISH_TIMEOUT,
    )
    try:
        async with serve_agents(settings) as api:
            run = await create_run(api, workflow=workflow, input=held_input(tmp_path))
            await wait_for_token(settings, run.name, "B2 ")
            async with log_full(settings):
                (tmp_path / "release").touch()
                # b's end is refused; its pick-up stops for it, and the run is picked up again.
                await wait_attempt(api, run.name, 2, timeout=60)
                window = await run_events(settings, run.name)
                (b_task,) = [
                    d["task"] for d in data(window, "run.node.started") if d["node"] == "b"
                ]
                assert await stored_writes(settings, thread_id(run), b_task) > 0, (
                    "b's writes are stored"
                )
                assert [d for d in data(window, "run.node.finished") if d["node"] == "b"] == [], (
                    "b's end is not in the log"
                )
            done = await wait_status(api, run.name, *FINISHED, timeout=90)
            events = await collect(api, run.name)  # StreamRun, as a client reads the run
    finally:
        await asyncio.to_thread(nats.stop)
    assert (S.RunStatus.Name(done.status), done.error) == ("RUN_STATUS_COMPLETED", "")
    expected = "A B1 B2 C" if workflow == THEN_C else "A B1 B2 "
    assert done.output["message"] == expected
    assert (tmp_path / "record").read_text() == "b\n", "b ran once: its writes were found"
    kinds = types(events)
    # What a client following the documented rule shows is the run's whole output (before:
    # b's text was dropped on `run.resumed`, "A C").
    assert shown_text(events) == done.output["message"], kinds
    finished_b = [
        (i, event_data(e))
        for i, e in enumerate(events)
        if e.type == "run.node.finished" and event_data(e)["node"] == "b"
    ]
    assert len(finished_b) == 1, kinds
    told_at, told = finished_b[0]
    assert told["task"] == b_task and told.get("recovered") is True, told
    assert told["attempt"] >= 2
    resumed_at = kinds.index("run.resumed")
    assert told_at < resumed_at, f"b's end comes before the resume: {kinds}"
    assert data(events, "run.resumed")[0]["attempt"] == told["attempt"]


_REFUSE = """
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('{name}') <= 1 THEN
        RAISE EXCEPTION 'the database is going away (test)' USING ERRCODE = '57P03';
    END IF;
    RETURN NEW;
END $$
"""
_TRIGGER = """
CREATE TRIGGER {name} BEFORE INSERT ON checkpoints FOR EACH ROW
WHEN (NEW.thread_id = '{thread}' AND NEW.checkpoint_ns = ''
      AND (NEW.checkpoint -> 'versions_seen') ? 'b')
EXECUTE FUNCTION {name}()
"""


@asynccontextmanager
async def checkpoint_after_b_refused(settings: Settings, thread: str) -> AsyncIterator[None]:
    """The first checkpoint of `thread` written after node b ran fails as an outage would
    (PostgreSQL's "cannot connect now"); the trigger is dropped on the way out."""
    name = f"test_refuse_after_b_{uuid.uuid4().hex[:8]}"
    uuid.UUID(thread)  # (put in the statement)
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f"CREATE SEQUENCE {name}"))
            await conn.execute(text(_REFUSE.format(name=name)))
            await conn.execute(text(_TRIGGER.format(name=name, thread=thread)))
            try:
                yield
            finally:
                await conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON checkpoints"))
                await conn.execute(text(f"DROP FUNCTION IF EXISTS {name}()"))
                await conn.execute(text(f"DROP SEQUENCE IF EXISTS {name}"))
    finally:
        await engine.dispose()


async def test_a_node_whose_end_is_in_the_log_is_not_told_again(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    """b's end is in the log and its pick-up stopped before the checkpoint after it: the next
    pick-up finds b's writes (it does not run b again) and tells of no end a second time."""
    settings = fault_settings(infra, events_address, QUEUE, AGENT_WORKERS=1)
    async with serve_agents(settings) as api:
        run = await create_run(api, workflow=B_LAST, input=held_input(tmp_path))
        await wait_for_token(settings, run.name, "B2 ")
        async with checkpoint_after_b_refused(settings, thread_id(run)):
            (tmp_path / "release").touch()
            done = await wait_status(api, run.name, *FINISHED, timeout=90)
        events = await collect(api, run.name)
    assert (S.RunStatus.Name(done.status), done.error) == ("RUN_STATUS_COMPLETED", "")
    assert done.attempt == 2, "the checkpoint after b was refused once: a second pick-up"
    assert (tmp_path / "record").read_text() == "b\n", "b ran once: its writes were found"
    kinds = types(events)
    finished = data(events, "run.node.finished")
    assert [(d["node"], d["attempt"]) for d in finished] == [("a", 1), ("b", 1)], kinds
    assert not any(d.get("recovered") for d in finished)
    assert data(events, "run.resumed") == [{"run": run.name, "attempt": 2, "reason": "redelivered"}]
    assert shown_text(events) == done.output["message"] == "A B1 B2 "
