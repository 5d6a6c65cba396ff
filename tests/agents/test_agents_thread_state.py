"""A thread's state and history as LangGraph Server users expect them (GetThreadState,
ListThreadHistory, UpdateThreadState, ListThreads' metadata filter), against the real agents
service, PostgreSQL and NATS; the model that must see an updated state is the fake Anthropic
server (tests/agents_fake_llm.py). The HTTP routes go through a real gateway."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from agents_helpers import S, chat_on_one_thread, create_run, rpc_error, wait_status
from faults_helpers import wait_node_b_started
from gateway_helpers import start_gateway
from google.protobuf import json_format
from sqlalchemy import text

from amelia_agents.server import build_service as build_agents
from amelia_agents.servicer import _new_run
from amelia_agents.store import Store
from amelia_common.db import create_engine, session_factory
from amelia_common.settings import Settings

DONE = (S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED)


def _plain(message: Any) -> Any:
    return json_format.MessageToDict(message)


async def _steps_run(agents: Any, tmp_path: Path, thread: str = "") -> S.Run:
    """A completed `test-steps` run (nodes a, b, c), in `thread` or a new one."""
    release = tmp_path / "release"
    release.touch()
    run = await create_run(
        agents,
        workflow="workflows/test-steps",
        thread=thread,
        input={"record": str(tmp_path / "record"), "release": str(release)},
    )
    done = await wait_status(agents, run.name, *DONE)
    assert done.status == S.RUN_STATUS_COMPLETED, done.error
    return done


async def _state(agents: Any, thread: str, checkpoint: str = "") -> S.ThreadState:
    request = S.GetThreadStateRequest(thread=thread, checkpoint=checkpoint)
    return (await agents.GetThreadState(request)).state


async def _update(agents: Any, thread: str, values: dict[str, Any], **more: Any) -> S.ThreadState:
    request = S.UpdateThreadStateRequest(thread=thread, **more)
    request.values.update(values)
    return (await agents.UpdateThreadState(request)).state


async def _history(agents: Any, thread: str, **request: Any) -> S.ListThreadHistoryResponse:
    return await agents.ListThreadHistory(S.ListThreadHistoryRequest(parent=thread, **request))


async def test_state_after_a_run_is_what_the_run_wrote(agents, tmp_path) -> None:
    run = await _steps_run(agents, tmp_path)
    state = await _state(agents, run.thread)
    assert state.thread == run.thread
    assert list(state.values["done"]) == ["a", "b", "c"]
    assert _plain(state.values)["request"]["record"] == str(tmp_path / "record")
    assert list(state.next) == [] and list(state.tasks) == [] and list(state.interrupts) == []
    assert state.run == run.name
    assert state.checkpoint and state.parent_checkpoint
    assert state.metadata["source"] == "loop" and state.step == int(state.metadata["step"])
    assert state.create_time.ToDatetime() <= run.end_time.ToDatetime()
    # The state at an earlier checkpoint: before c ran, c is next and b's update is there.
    before_c = await _state(agents, run.thread, state.parent_checkpoint)
    assert list(before_c.values["done"]) == ["a", "b"]
    assert list(before_c.next) == ["c"]
    assert [t.node for t in before_c.tasks] == ["c"]
    assert _plain(before_c.tasks[0].update) == {"done": ["a", "b", "c"]}
    assert before_c.checkpoint == state.parent_checkpoint


async def test_a_paused_thread_shows_its_question(agents) -> None:
    run = await create_run(agents, workflow="workflows/test-ask", input={"question": "Ship it?"})
    await wait_status(agents, run.name, S.RUN_STATUS_PAUSED)
    state = await _state(agents, run.thread)
    assert list(state.next) == ["ask"]
    assert [(i.node, _plain(i.value)) for i in state.interrupts] == [
        ("ask", {"question": "Ship it?"})
    ]
    assert _plain(state.tasks[0].interrupts[0].value) == {"question": "Ship it?"}
    await agents.CancelRun(S.CancelRunRequest(name=run.name))


async def test_history_is_newest_first_and_pages_without_gaps_or_repeats(agents, tmp_path) -> None:
    first = await _steps_run(agents, tmp_path)
    second = await _steps_run(agents, tmp_path, thread=first.thread)
    whole = await _history(agents, first.thread, page_size=1000)
    assert whole.next_page_token == ""
    states = list(whole.states)
    # Both runs' checkpoints, the second run's first: each child's parent is the next one.
    assert states[0].run == second.name and states[-1].run == first.name
    assert {s.run for s in states} == {first.name, second.name}
    for newer, older in itertools.pairwise(states):
        assert newer.parent_checkpoint == older.checkpoint
        assert newer.create_time.ToDatetime() >= older.create_time.ToDatetime()
    assert states[0] == await _state(agents, first.thread)

    pages: list[S.ThreadState] = []
    token = ""
    while True:
        page = await _history(agents, first.thread, page_size=3, page_token=token)
        assert len(page.states) <= 3
        pages += page.states
        token = page.next_page_token
        if not token:
            break
        if len(pages) == 3:  # a checkpoint saved meanwhile is newer: later pages do not move
            await _update(agents, first.thread, {"done": ["edited"]}, as_node="c")
    assert [s.checkpoint for s in pages] == [s.checkpoint for s in states]

    # LangGraph's filters: metadata (as text, so step 2 matches "2") and `before`.
    updates = await _history(agents, first.thread, metadata_filter={"source": "update"})
    assert [s.metadata["source"] for s in updates.states] == ["update"]
    # `done` has no reducer: the update replaces it.
    assert updates.states[0].run == "" and list(updates.states[0].values["done"]) == ["edited"]
    step = str(states[2].step)
    at_step = await _history(agents, first.thread, metadata_filter={"step": step})
    assert {s.step for s in at_step.states} == {states[2].step} and at_step.states
    older = await _history(agents, first.thread, before=states[1].checkpoint, page_size=2)
    assert [s.checkpoint for s in older.states] == [s.checkpoint for s in states[2:4]]


async def test_an_update_is_what_the_next_run_starts_from(agents, fake_anthropic) -> None:
    first = await create_run(
        agents,
        workflow="workflows/chat",
        input={"message": "My name is Ada.", "model": "offline:echo"},
    )
    await wait_status(agents, first.name, S.RUN_STATUS_COMPLETED)
    before = (await agents.GetThread(S.GetThreadRequest(name=first.thread))).thread.update_time
    told = {"role": "user", "content": "Actually, call me Zed."}
    state = await _update(agents, first.thread, {"messages": [told]}, as_node="respond")
    # The edit is the thread's latest activity (`update_time desc` lists it first).
    after = (await agents.GetThread(S.GetThreadRequest(name=first.thread))).thread.update_time
    assert after.ToDatetime() > before.ToDatetime()
    assert [m["content"] for m in _plain(state.values)["messages"]] == [
        "My name is Ada.",
        "My name is Ada.",
        "Actually, call me Zed.",
    ]
    assert state.metadata["source"] == "update" and state.run == ""
    assert list(state.next) == []
    assert await _state(agents, first.thread) == state

    agent = (
        await agents.CreateAgent(
            S.CreateAgentRequest(
                agent=S.Agent(model="anthropic:transcript"),
                agent_id=f"state-{uuid.uuid4().hex[:8]}",
            )
        )
    ).agent
    second = await create_run(
        agents, agent=agent.name, thread=first.thread, input={"message": "Who am I?"}
    )
    done = await wait_status(agents, second.name, *DONE)
    assert done.status == S.RUN_STATUS_COMPLETED, done.error
    sent = fake_anthropic.requests[-1]["body"]["messages"]
    assert [m["content"] for m in sent] == [
        "My name is Ada.",
        "My name is Ada.",
        "Actually, call me Zed.",
        "Who am I?",
    ]


async def test_an_update_is_refused_while_a_run_of_the_thread_is_active(agents, tmp_path) -> None:
    release = tmp_path / "release"
    run = await create_run(
        agents,
        workflow="workflows/test-steps",
        input={"record": str(tmp_path / "record"), "release": str(release)},
    )
    await wait_status(agents, run.name, S.RUN_STATUS_RUNNING)
    refused = await rpc_error(_update(agents, run.thread, {"done": ["x"]}, as_node="a"))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert run.name in (refused.details() or "") and "running" in (refused.details() or "")
    release.touch()
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    state = await _update(agents, run.thread, {"done": ["x"]}, as_node="a")
    # Written as `a`: b runs next, from the state a left plus the update.
    assert list(state.next) == ["b"] and list(state.values["done"]) == ["x"]

    paused = await create_run(agents, workflow="workflows/test-ask", input={})
    await wait_status(agents, paused.name, S.RUN_STATUS_PAUSED)
    refused = await rpc_error(_update(agents, paused.thread, {"answer": "no"}, as_node="ask"))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "paused" in (refused.details() or "")
    await agents.CancelRun(S.CancelRunRequest(name=paused.name))


async def test_bad_input_says_what_is_wrong(agents, tmp_path) -> None:
    run = await _steps_run(agents, tmp_path)

    async def code(call: Any, *words: str) -> grpc.StatusCode:
        error = await rpc_error(call)
        for word in words:
            assert word in (error.details() or ""), error.details()
        return error.code()

    nope = "1f0c0000-0000-6000-8000-000000000000"
    assert await code(_state(agents, run.thread, nope), nope) == grpc.StatusCode.NOT_FOUND
    assert await code(_state(agents, run.thread, "x y"), "checkpoint") == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    missing = f"threads/{uuid.uuid4()}"
    assert await code(_state(agents, missing)) == grpc.StatusCode.NOT_FOUND
    assert await code(_history(agents, missing)) == grpc.StatusCode.NOT_FOUND
    assert await code(_update(agents, missing, {}, as_node="a")) == grpc.StatusCode.NOT_FOUND
    assert await code(_update(agents, run.thread, {"done": ["x"]}, as_node="zz"), "a, b, c") == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await code(_update(agents, run.thread, {"dnoe": ["x"]}, as_node="c"), "'dnoe'") == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await code(
        _update(agents, run.thread, {"done": ["x"]}, as_node="c", checkpoint=nope), nope
    ) == (grpc.StatusCode.NOT_FOUND)
    assert await code(_history(agents, run.thread, page_token="garbage")) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # A page token answers the request it was made for (AIP-158): not another thread's history,
    # nor the same history with another filter.
    token = (await _history(agents, run.thread, page_size=1)).next_page_token
    assert token
    other = await _steps_run(agents, tmp_path)
    assert await code(_history(agents, other.thread, page_size=1, page_token=token)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    filtered = _history(agents, run.thread, page_token=token, metadata_filter={"source": "loop"})
    assert await code(filtered) == grpc.StatusCode.INVALID_ARGUMENT
    assert (await _history(agents, run.thread, page_size=1, page_token=token)).states
    assert await code(_history(agents, run.thread, metadata_filter={"": "x"})) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await code(_history(agents, run.thread, page_size=-1)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # Nothing was written by the refused updates.
    assert (await _state(agents, run.thread)).metadata["source"] == "loop"

    # A thread without a run has no state yet, and no graph to update it with.
    empty = (await agents.CreateThread(S.CreateThreadRequest())).thread
    state = await _state(agents, empty.name)
    assert state.thread == empty.name and state.checkpoint == "" and not state.values
    assert list((await _history(agents, empty.name)).states) == []
    assert await code(_update(agents, empty.name, {"done": []}), "no run yet") == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_list_threads_filters_on_metadata(agents) -> None:
    team = f"team-{uuid.uuid4().hex[:8]}"
    made = []
    for meta in ({"team": team, "n": 2}, {"team": team, "n": 3}, {"team": "other", "n": 2}):
        request = S.CreateThreadRequest()
        request.thread.metadata.update(meta)
        made.append((await agents.CreateThread(request)).thread.name)

    async def names(**wanted: str) -> list[str]:
        reply = await agents.ListThreads(
            S.ListThreadsRequest(metadata_filter=wanted, page_size=1000)
        )
        return [t.name for t in reply.threads]

    assert await names(team=team) == made[:2]
    assert await names(team=team, n="2") == made[:1]
    assert await names(team=team, n="2.0") == made[:1]  # as numbers, as ListRuns' filter does
    assert await names(team=team, n="4") == []
    # Pages of a filtered list hold only matching threads.
    first = await agents.ListThreads(
        S.ListThreadsRequest(metadata_filter={"team": team}, page_size=1)
    )
    rest = await agents.ListThreads(
        S.ListThreadsRequest(metadata_filter={"team": team}, page_token=first.next_page_token)
    )
    assert [t.name for t in [*first.threads, *rest.threads]] == made[:2]
    refused = await rpc_error(agents.ListThreads(S.ListThreadsRequest(metadata_filter={"": "x"})))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def http(infra: Any, agents_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway in front of an agents service of its own (one worker), as curl reaches it."""
    service = await build_agents(agents_settings.model_copy(update={"AGENT_WORKERS": 1}))
    port = await service.start()
    gateway = await start_gateway(
        infra.settings(
            EVENTS_ADDRESS=agents_settings.EVENTS_ADDRESS, AGENTS_ADDRESS=f"127.0.0.1:{port}"
        )
    )
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            yield client
    finally:
        await gateway.stop()
        await service.stop(1.0)


async def _finished(http: httpx.AsyncClient, run: str) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            body: dict[str, Any] = (await http.get(f"/v1/{run}")).json()["run"]
            if body["status"] not in ("RUN_STATUS_QUEUED", "RUN_STATUS_RUNNING"):
                return body
            await asyncio.sleep(0.05)


def _status(reply: httpx.Response, http_status: int, code: int, *words: str) -> None:
    """A google.rpc.Status body with `code`, whose message has `words`."""
    assert reply.status_code == http_status, reply.text
    body = reply.json()
    assert body["code"] == code, body
    for word in words:
        assert word in body["message"], body


async def test_the_routes_through_the_gateway(http, tmp_path) -> None:
    release = tmp_path / "release"
    release.touch()
    created = await http.post(
        "/v1/runs",
        json={
            "run": {
                "workflow": "workflows/test-steps",
                "input": {"record": str(tmp_path / "record"), "release": str(release)},
            }
        },
    )
    assert created.status_code == 200, created.text
    run = await _finished(http, created.json()["run"]["name"])
    assert run["status"] == "RUN_STATUS_COMPLETED", run
    thread = run["thread"]

    reply = await http.get(f"/v1/{thread}/state")
    assert reply.status_code == 200, reply.text
    state = reply.json()["state"]
    assert state["values"]["done"] == ["a", "b", "c"]
    assert state["next"] == [] and state["tasks"] == [] and state["run"] == run["name"]
    assert state["metadata"]["source"] == "loop" and state["createTime"]
    at = await http.get(f"/v1/{thread}/state/{state['parentCheckpoint']}")
    assert at.status_code == 200, at.text
    assert at.json()["state"]["next"] == ["c"]

    first = (await http.get(f"/v1/{thread}/history", params={"pageSize": 2})).json()
    assert [s["checkpoint"] for s in first["states"]] == [
        state["checkpoint"],
        state["parentCheckpoint"],
    ]
    rest = await http.post(f"/v1/{thread}/history", json={"pageToken": first["nextPageToken"]})
    assert rest.status_code == 200, rest.text
    assert rest.json()["states"][0]["checkpoint"] == first["states"][1]["parentCheckpoint"]
    loops = await http.get(f"/v1/{thread}/history", params={"metadataFilter[source]": "input"})
    assert [s["metadata"]["source"] for s in loops.json()["states"]] == ["input"]

    updated = await http.post(
        f"/v1/{thread}/state", json={"values": {"done": ["z"]}, "asNode": "c"}
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["state"]["values"]["done"] == ["z"]
    assert updated.json()["state"]["metadata"]["source"] == "update"
    assert (await http.get(f"/v1/{thread}/state")).json()["state"] == updated.json()["state"]

    nope = "1f0c0000-0000-6000-8000-000000000000"
    _status(await http.get(f"/v1/{thread}/state/{nope}"), 404, 5, nope, "ListThreadHistory")
    _status(
        await http.post(f"/v1/{thread}/state", json={"values": {"done": []}, "asNode": "x"}),
        400,
        3,
        "as_node",
        "a, b, c",
    )
    _status(await http.post(f"/v1/{thread}/state", json={"values": ["not", "an object"]}), 400, 3)
    _status(await http.get(f"/v1/{thread}/history", params={"pageToken": "junk"}), 400, 3)
    _status(await http.get(f"/v1/threads/{uuid.uuid4()}/state"), 404, 5, "does not exist")

    # While a run of the thread is active: 400 FAILED_PRECONDITION naming it.
    busy = await http.post(
        "/v1/runs",
        json={
            "run": {
                "workflow": "workflows/test-steps",
                "thread": thread,
                "input": {"record": str(tmp_path / "record"), "release": str(tmp_path / "held")},
            }
        },
    )
    busy_run = busy.json()["run"]["name"]
    refused = await http.post(f"/v1/{thread}/state", json={"values": {"done": []}, "asNode": "c"})
    _status(refused, 400, 9, busy_run)
    assert (await http.post(f"/v1/{busy_run}:cancel", json={})).status_code == 200

    # ListThreads' metadata filter, in a query string and as LangGraph's POST search.
    team = f"team-{uuid.uuid4().hex[:8]}"
    made = (await http.post("/v1/threads", json={"thread": {"metadata": {"team": team}}})).json()
    found = await http.get("/v1/threads", params={"metadataFilter[team]": team})
    assert [t["name"] for t in found.json()["threads"]] == [made["thread"]["name"]]
    searched = await http.post("/v1/threads:search", json={"metadataFilter": {"team": team}})
    assert searched.status_code == 200, searched.text
    assert searched.json()["threads"] == found.json()["threads"]


async def test_an_update_racing_a_new_run_lands_before_it_or_is_refused(agents, tmp_path) -> None:
    """UpdateThreadState and CreateRun sent together, several times: the update is written
    before the run's first checkpoint (the run starts from it) or refused naming the run;
    never in the middle of the run."""
    run = await _steps_run(agents, tmp_path)
    release = tmp_path / "release"
    outcomes = set()
    for attempt in range(6):
        update = _update(agents, run.thread, {"done": [f"u{attempt}"]}, as_node="c")
        started = create_run(
            agents,
            workflow="workflows/test-steps",
            thread=run.thread,
            input={"record": str(tmp_path / "record"), "release": str(release)},
        )
        # Sent one then the other, in turn: the second usually finds the first done.
        calls = (update, started) if attempt % 2 == 0 else (started, update)
        results = await asyncio.gather(*calls, return_exceptions=True)
        updated, new = results if attempt % 2 == 0 else results[::-1]
        assert isinstance(new, S.Run), new
        await wait_status(agents, new.name, S.RUN_STATUS_COMPLETED)
        history = list((await _history(agents, run.thread, page_size=1000)).states)
        mine = [i for i, s in enumerate(history) if s.run == new.name]
        if isinstance(updated, grpc.aio.AioRpcError):
            assert updated.code() == grpc.StatusCode.FAILED_PRECONDITION, updated
            assert new.name in (updated.details() or "")
            assert history[max(mine) + 1].metadata["source"] != "update"
            outcomes.add("refused")
        else:
            assert isinstance(updated, S.ThreadState), updated
            at = next(i for i, s in enumerate(history) if s.checkpoint == updated.checkpoint)
            assert at == max(mine) + 1, [(s.run, s.metadata["source"]) for s in history]
            # The run's input went on top of the updated state (no reducer: replaced by a, …).
            assert list(history[max(mine)].values["done"]) == [f"u{attempt}"]
            outcomes.add("before")
    assert outcomes  # which ones happen depends on timing; each is checked when it does


async def test_an_update_waits_for_a_run_being_recorded_then_is_refused(
    agents, agents_settings, tmp_path
) -> None:
    """A run recorded while an update comes (CreateRun's transaction, held open here between
    its statement and its commit, as while it queues the job): the update waits for it, then
    sees the run and is refused, instead of writing a checkpoint under a starting run."""
    run = await _steps_run(agents, tmp_path)
    engine = create_engine(agents_settings)
    store = Store(session_factory(engine))
    recorded, commit = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        recorded.set()
        await commit.wait()

    row = _new_run(
        agents_settings,
        agent_id=None,
        workflow="test-steps",
        thread_id=uuid.UUID(run.thread.removeprefix("threads/")),
        input_value={"record": str(tmp_path / "record"), "release": str(tmp_path / "release")},
        agent_config=None,
        timeout=None,
        request_id="",
    )
    try:
        recording = asyncio.create_task(store.create_run(row, False, before_commit=hold))
        await recorded.wait()
        update = asyncio.create_task(_update(agents, run.thread, {"done": ["u"]}, as_node="c"))
        async with asyncio.timeout(60):  # the update's statement waits for the thread's row
            while not update.done() and not await _waiting_for_a_lock(engine):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert not update.done(), "the update did not wait for the run being recorded"
        commit.set()
        await recording
        refused = await rpc_error(update)
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused
        assert f"runs/{row.id}" in (refused.details() or "")
        assert (await _state(agents, run.thread)).metadata["source"] == "loop"
    finally:
        commit.set()
        await agents.CancelRun(S.CancelRunRequest(name=f"runs/{row.id}"))
        await engine.dispose()


async def _waiting_for_a_lock(engine: Any) -> bool:
    """Whether a statement on the threads table waits for a row lock now."""
    async with engine.connect() as conn:
        waiting = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query ILIKE '%FROM threads%FOR UPDATE%'"
            )
        )
    return bool(waiting)


async def test_an_update_from_an_earlier_checkpoint_branches_and_the_next_run_follows(
    agents, tmp_path
) -> None:
    run = await _steps_run(agents, tmp_path)
    head = await _state(agents, run.thread)
    before_c = head.parent_checkpoint
    branch = await _update(
        agents, run.thread, {"done": ["branch"]}, as_node="b", checkpoint=before_c
    )
    # A new head whose parent is the checkpoint named, with b's update replaced: c is next.
    assert branch.parent_checkpoint == before_c and list(branch.next) == ["c"]
    assert list(branch.values["done"]) == ["branch"]
    assert await _state(agents, run.thread) == branch
    assert (await _history(agents, run.thread, page_size=1)).states[0] == branch
    # The next run starts from the branch (its input goes on top; the graph starts over).
    again = await _steps_run(agents, tmp_path, thread=run.thread)
    assert list(again.output["done"]) == ["branch", "a", "b", "c"]


async def _continue(agents: Any, thread: str, **run: Any) -> S.Run:
    """A run created on `thread` without input: it continues the thread's latest checkpoint."""
    request = S.CreateRunRequest(run=S.Run(thread=thread, **run))
    return (await agents.CreateRun(request)).run


async def test_a_run_without_input_runs_the_edited_states_next_node(agents, tmp_path) -> None:
    first = await _steps_run(agents, tmp_path)
    (tmp_path / "record").write_text("")
    edited = await _update(agents, first.thread, {"done": ["x"]}, as_node="a")
    assert list(edited.next) == ["b"]

    run = await _continue(agents, first.thread, workflow="workflows/test-steps")
    assert not run.HasField("input")
    done = await wait_status(agents, run.name, *DONE)
    assert done.status == S.RUN_STATUS_COMPLETED, done.error
    # b and c ran on the edited state; a did not run again.
    assert [line.split()[0] for line in (tmp_path / "record").read_text().splitlines()] == [
        "b",
        "c",
    ]
    assert _plain(done.output) == {"done": ["x", "b", "c"]}
    state = await _state(agents, first.thread)
    assert list(state.next) == [] and state.run == run.name
    assert list(state.values["done"]) == ["x", "b", "c"]


async def test_the_model_sees_the_edit_when_the_thread_continues(agents) -> None:
    (first,) = await chat_on_one_thread(agents, ("hi", "offline:echo"))
    secret = {"role": "user", "content": "The secret word is PAPAYA."}
    edited = await _update(agents, first.thread, {"messages": [secret]}, as_node="retrieve")
    assert list(edited.next) == ["respond"]
    # Continued on the same graph, with the model named in the first run's input.
    run = await _continue(agents, first.thread, workflow="workflows/chat")
    done = await wait_status(agents, run.name, *DONE)
    assert done.status == S.RUN_STATUS_COMPLETED, done.error
    state = _plain(await _state(agents, first.thread))
    assert [m["content"] for m in state["values"]["messages"]] == [
        "hi",
        "hi",
        "The secret word is PAPAYA.",
        "The secret word is PAPAYA.",  # offline:echo answered the edited last message
    ]


async def test_a_run_without_input_needs_something_to_continue(agents, tmp_path) -> None:
    run = await _steps_run(agents, tmp_path)

    async def refused(call: Any, *words: str) -> grpc.StatusCode:
        error = await rpc_error(call)
        for word in words:
            assert word in (error.details() or ""), error.details()
        return error.code()

    # Its latest checkpoint ended the graph: nothing to run.
    assert (
        await refused(
            _continue(agents, run.thread, workflow="workflows/test-steps"),
            "nothing to continue",
            "input is required",
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    empty = (await agents.CreateThread(S.CreateThreadRequest())).thread
    assert (
        await refused(
            _continue(agents, empty.name, workflow="workflows/test-steps"), "nothing to continue"
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    # A pending node, but another graph than the thread's.
    await _update(agents, run.thread, {"done": ["x"]}, as_node="a")
    assert (
        await refused(
            _continue(agents, run.thread, workflow="workflows/chat"), "workflows/test-steps"
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    # An empty input is a fresh start, checked as one (chat needs a message).
    fresh = S.Run(thread=run.thread, workflow="workflows/chat")
    fresh.input.SetInParent()
    assert (
        await refused(agents.CreateRun(S.CreateRunRequest(run=fresh)), "message")
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert list((await _state(agents, run.thread)).next) == ["b"]


async def test_a_cancelled_question_asks_again_when_the_thread_continues(agents) -> None:
    paused = await create_run(agents, workflow="workflows/test-ask", input={"question": "Ok?"})
    await wait_status(agents, paused.name, S.RUN_STATUS_PAUSED)
    await agents.CancelRun(S.CancelRunRequest(name=paused.name))
    await wait_status(agents, paused.name, S.RUN_STATUS_CANCELLED)

    run = await _continue(agents, paused.thread, workflow="workflows/test-ask")
    asked = await wait_status(agents, run.name, S.RUN_STATUS_PAUSED, *DONE)
    assert asked.status == S.RUN_STATUS_PAUSED, asked.error
    assert _plain(asked.interrupt.value) == {"question": "Ok?"}
    resume = S.ResumeRunRequest(name=run.name)
    resume.answer.string_value = "yes"
    await agents.ResumeRun(resume)
    done = await wait_status(agents, run.name, *DONE)
    assert done.status == S.RUN_STATUS_COMPLETED, done.error
    assert _plain(done.output) == {"result": "answer was yes"}


async def test_a_run_without_input_over_http(http, tmp_path) -> None:
    release = tmp_path / "release"
    release.touch()
    request = {"record": str(tmp_path / "record"), "release": str(release)}
    created = await http.post(
        "/v1/runs", json={"run": {"workflow": "workflows/test-steps", "input": request}}
    )
    run = await _finished(http, created.json()["run"]["name"])
    thread = run["thread"]
    nothing = await http.post(
        "/v1/runs", json={"run": {"workflow": "workflows/test-steps", "thread": thread}}
    )
    _status(nothing, 400, 3, "nothing to continue")
    _status(await http.get(f"/v1/{thread}/state/garbage"), 400, 3, "not a checkpoint id")
    wizard = {"values": {"messages": [{"role": "wizard", "content": 42}]}, "asNode": "c"}
    _status(await http.post(f"/v1/{thread}/state", json=wizard), 400, 3, "messages[0].role")
    edited = await http.post(f"/v1/{thread}/state", json={"values": {"done": []}, "asNode": "b"})
    assert edited.json()["state"]["next"] == ["c"], edited.text
    for body in (
        {"workflow": "workflows/test-steps", "thread": thread, "input": None},
        {"workflow": "workflows/test-steps", "thread": thread},
    ):
        continued = await http.post("/v1/runs", json={"run": body})
        assert continued.status_code == 200, continued.text
        assert "input" not in continued.json()["run"] or not continued.json()["run"]["input"]
        ended = await _finished(http, continued.json()["run"]["name"])
        assert ended["status"] == "RUN_STATUS_COMPLETED", ended
        assert ended["output"] == {"done": ["c"]}
        # Ready for the second form: c pending again.
        await http.post(f"/v1/{thread}/state", json={"values": {"done": []}, "asNode": "b"})


async def test_an_update_with_unreadable_messages_or_checkpoint_is_refused(agents) -> None:
    (first,) = await chat_on_one_thread(agents, ("hi", "offline:echo"))
    before = await _state(agents, first.thread)
    for messages, words in (
        ([{"role": "wizard", "content": 42}], ("values.messages[0].role", "wizard")),
        ([{"role": "user", "content": "ok"}, {"role": "user", "content": 42}], ("[1].content",)),
        ([{"role": "user"}], ("values.messages[0].content",)),
        (["hello"], ("values.messages[0]",)),
        ({"role": "user", "content": "x"}, ("values.messages must be a list",)),
    ):
        error = await rpc_error(
            _update(agents, first.thread, {"messages": messages}, as_node="respond")
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        for word in words:
            assert word in (error.details() or ""), error.details()
    assert await _state(agents, first.thread) == before  # nothing written
    ok = {"role": "tool", "content": "42", "tool_call_id": "t1"}
    state = await _update(agents, first.thread, {"messages": [ok]}, as_node="respond")
    assert _plain(state.values)["messages"][-1] == ok
    # Not a checkpoint id at all: INVALID_ARGUMENT, not NOT_FOUND.
    error = await rpc_error(_state(agents, first.thread, "garbage"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ListThreadHistory" in (error.details() or "")


async def test_a_forks_values_are_checked_as_an_updates_are(agents) -> None:
    """ForkRun's `values` go the one way UpdateThreadState's do (QA s20: `{"messages": "hi"}`
    was a 500, `{"messages": ["hi"]}` was stored and failed every later run of the thread, and
    an unknown key was dropped without a word): refused INVALID_ARGUMENT, nothing recorded,
    the thread as it was."""
    (first,) = await chat_on_one_thread(agents, ("hi", "offline:echo"))
    steps = (await agents.ListRunSteps(S.ListRunStepsRequest(parent=first.name))).steps
    before = await _state(agents, first.thread)
    runs_before = (await agents.ListRuns(S.ListRunsRequest(thread=first.thread))).runs
    for values, words in (
        ({"messages": "hi"}, ("values.messages must be a list",)),
        ({"messages": ["hi"]}, ("values.messages[0]",)),
        ({"messages": [{"role": "robot", "content": {"x": 1}}]}, ("messages[0].role", "robot")),
        ({"bogus": 1}, ("'bogus'", "not a key of the thread's state")),
    ):
        request = S.ForkRunRequest(name=first.name, checkpoint=steps[-1].checkpoint)
        request.values.update(values)
        error = await rpc_error(agents.ForkRun(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (values, error.details())
        for word in words:
            assert word in (error.details() or ""), error.details()
    assert await _state(agents, first.thread) == before
    assert (await agents.ListRuns(S.ListRunsRequest(thread=first.thread))).runs == runs_before
    # Values that fit: the fork runs, and the thread's next run reads them.
    request = S.ForkRunRequest(name=first.name, checkpoint=steps[-1].checkpoint)
    request.values.update({"messages": [{"role": "user", "content": "forked"}]})
    fork = await wait_status(agents, (await agents.ForkRun(request)).run.name, *DONE)
    assert fork.status == S.RUN_STATUS_COMPLETED, fork.error
    after = await create_run(
        agents,
        workflow="workflows/chat",
        thread=first.thread,
        input={"message": "and on", "model": "offline:echo"},
    )
    after = await wait_status(agents, after.name, *DONE)
    assert after.status == S.RUN_STATUS_COMPLETED, after.error
    contents = [
        m["content"] for m in _plain((await _state(agents, first.thread)).values)["messages"]
    ]
    assert "forked" in contents and contents[-2:] == ["and on", "and on"]


async def test_a_paused_runs_refusal_names_the_way_to_edit_it(agents) -> None:
    paused = await create_run(agents, workflow="workflows/test-ask", input={})
    await wait_status(agents, paused.name, S.RUN_STATUS_PAUSED)
    error = await rpc_error(_update(agents, paused.thread, {"answer": "no"}, as_node="ask"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Each client's way to fork: the RPC, the CLI command and the HTTP route.
    assert "(ForkRun; CLI `amelia runs fork" in (error.details() or ""), error.details()
    assert f"`amelia runs fork {paused.name} <checkpoint>" in (error.details() or "")
    assert f"POST /v1/{paused.name}:fork" in (error.details() or "")
    assert "cancel" in (error.details() or "")
    await agents.CancelRun(S.CancelRunRequest(name=paused.name))


async def test_an_update_retried_with_its_request_id_is_written_once(agents, http) -> None:
    (first,) = await chat_on_one_thread(agents, ("hi", "offline:echo"))
    said = {"role": "user", "content": "r"}
    once = await _update(
        agents, first.thread, {"messages": [said]}, as_node="respond", request_id="edit-1"
    )
    again = await _update(
        agents, first.thread, {"messages": [said]}, as_node="respond", request_id="edit-1"
    )
    assert again == once
    assert [m["content"] for m in _plain(once.values)["messages"]] == ["hi", "hi", "r"]
    # Over HTTP (a client whose first call timed out retries it), and after the thread moved on.
    later = await _update(agents, first.thread, {"messages": [said]}, as_node="respond")
    body = {"values": {"messages": [said]}, "asNode": "respond", "requestId": "edit-1"}
    retried = await http.post(f"/v1/{first.thread}/state", json=body)
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"]["checkpoint"] == once.checkpoint
    assert (await _state(agents, first.thread)).checkpoint == later.checkpoint
    # The same id with another update: ALREADY_EXISTS, nothing written.
    error = await rpc_error(
        _update(
            agents,
            first.thread,
            {"messages": [{"role": "user", "content": "other"}]},
            as_node="respond",
            request_id="edit-1",
        )
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "edit-1" in (error.details() or "")
    assert (await _state(agents, first.thread)).checkpoint == later.checkpoint
    error = await rpc_error(_update(agents, first.thread, {}, request_id="x" * 200))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_questions_interrupt_carries_langgraphs_id(agents) -> None:
    paused = await create_run(agents, workflow="workflows/test-ask", input={})
    asked = await wait_status(agents, paused.name, S.RUN_STATUS_PAUSED)
    state = await _state(agents, paused.thread)
    assert state.interrupts[0].id and state.interrupts[0].id == state.tasks[0].interrupts[0].id
    assert asked.interrupt.id == state.interrupts[0].id
    await agents.CancelRun(S.CancelRunRequest(name=paused.name))


async def test_a_request_id_of_another_request_is_refused_not_handed_back(agents, tmp_path) -> None:
    """A retried request_id gets its run back only from the same request (QA s20: RerunRun and
    ForkRun handed back whatever run the id had made — a CreateRun's, another source's rerun,
    a fork with other values — as CreateRun already refused to)."""
    echo = S.CreateRunRequest(run=S.Run(workflow="workflows/echo"), request_id=f"c-{uuid.uuid4()}")
    echo.run.input.update({"message": "hi"})
    made = (await agents.CreateRun(echo)).run
    await wait_status(agents, made.name, *DONE)
    source = await _steps_run(agents, tmp_path)

    async def refused(call: Any, *words: str) -> None:
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error.details()
        for word in ("a retry must repeat the same request", *words):
            assert word in (error.details() or ""), error.details()

    # A CreateRun's id sent with a rerun.
    await refused(
        agents.RerunRun(S.RerunRunRequest(name=source.name, request_id=echo.request_id)),
        "by CreateRun",
    )
    # A rerun's id: the same rerun gets its run back; another source's, or a CreateRun, not.
    key = f"r-{uuid.uuid4()}"
    rerun = (await agents.RerunRun(S.RerunRunRequest(name=made.name, request_id=key))).run
    again = (await agents.RerunRun(S.RerunRunRequest(name=made.name, request_id=key))).run
    assert again.name == rerun.name
    await refused(
        agents.RerunRun(S.RerunRunRequest(name=source.name, request_id=key)),
        f"by RerunRun of {made.name}",
    )
    twin = S.CreateRunRequest(run=S.Run(workflow="workflows/echo"), request_id=key)
    twin.run.input.update({"message": "hi"})
    await refused(agents.CreateRun(twin), f"by RerunRun of {made.name}")
    await wait_status(agents, rerun.name, *DONE)

    # Forks: the same values get the fork back; other values, sent at once, each refused.
    steps = (await agents.ListRunSteps(S.ListRunStepsRequest(parent=source.name))).steps

    def fork(done: list[str], request_id: str) -> S.ForkRunRequest:
        request = S.ForkRunRequest(
            name=source.name, checkpoint=steps[1].checkpoint, request_id=request_id
        )
        request.values.update({"done": done})
        return request

    key = f"f-{uuid.uuid4()}"
    forked = (await agents.ForkRun(fork(["x"], key))).run
    assert (await agents.ForkRun(fork(["x"], key))).run.name == forked.name
    await refused(agents.ForkRun(fork(["y"], key)), f"by ForkRun of {source.name}")
    await wait_status(agents, forked.name, *DONE)
    key = f"f-{uuid.uuid4()}"
    results = await asyncio.gather(
        *(agents.ForkRun(fork([f"v{i}"], key)) for i in range(6)), return_exceptions=True
    )
    made_forks = [r.run.name for r in results if not isinstance(r, BaseException)]
    codes = sorted(r.code().name for r in results if isinstance(r, grpc.aio.AioRpcError))
    assert len(made_forks) == 1, results
    # The others were refused: their id taken by other values, or the thread busy with the one.
    assert len(codes) == 5 and set(codes) <= {"ALREADY_EXISTS", "FAILED_PRECONDITION"}, codes
    done = await wait_status(agents, made_forks[0], *DONE)
    assert done.status == S.RUN_STATUS_COMPLETED, done.error


async def test_a_rerun_of_a_run_that_continued_its_thread_continues_one_too(
    agents, tmp_path
) -> None:
    """A run without input continued its thread; its rerun needs a thread to continue, and is
    refused up front rather than accepted and FAILED (QA s20), the way CreateRun refuses."""
    first = await _steps_run(agents, tmp_path)
    await _update(agents, first.thread, {"done": ["a"]}, as_node="a")
    continued = await wait_status(
        agents, (await _continue(agents, first.thread, workflow="workflows/test-steps")).name, *DONE
    )
    assert continued.status == S.RUN_STATUS_COMPLETED, continued.error
    alone = await rpc_error(agents.RerunRun(S.RerunRunRequest(name=continued.name)))
    assert alone.code() == grpc.StatusCode.INVALID_ARGUMENT, alone.details()
    assert "name the thread to continue" in (alone.details() or "")
    ended = await rpc_error(
        agents.RerunRun(S.RerunRunRequest(name=continued.name, thread=continued.thread))
    )
    assert ended.code() == grpc.StatusCode.INVALID_ARGUMENT, ended.details()
    assert "nothing to continue" in (ended.details() or "")
    # With something to continue on its thread, it runs.
    await _update(agents, first.thread, {"done": ["a"]}, as_node="a")
    rerun = (
        await agents.RerunRun(S.RerunRunRequest(name=continued.name, thread=continued.thread))
    ).run
    done = await wait_status(agents, rerun.name, *DONE)
    assert done.status == S.RUN_STATUS_COMPLETED, done.error
    assert list(done.output["done"]) == ["a", "b", "c"]


async def _step_nodes(agents: Any, run: str) -> list[tuple[str, str]]:
    listed = (await agents.ListRunSteps(S.ListRunStepsRequest(parent=run))).steps
    return [(s.node, S.RunStepState.Name(s.state).removeprefix("RUN_STEP_STATE_")) for s in listed]


async def test_a_continuations_first_step_is_its_own(agents, tmp_path) -> None:
    """A run without input executes the tasks of a checkpoint another wrote (an update, or the
    run it continues): that step is listed as its, and forks from it (QA s20: it was missing,
    or listed COMPLETED under the cancelled run that never did it)."""
    first = await _steps_run(agents, tmp_path)
    await _update(agents, first.thread, {"done": ["a"]}, as_node="a")  # next: b
    continued = await _continue(agents, first.thread, workflow="workflows/test-steps")
    continued = await wait_status(agents, continued.name, *DONE)
    assert continued.status == S.RUN_STATUS_COMPLETED, continued.error
    assert await _step_nodes(agents, continued.name) == [("b", "COMPLETED"), ("c", "COMPLETED")]
    assert await _step_nodes(agents, first.name) == [
        ("a", "COMPLETED"),
        ("b", "COMPLETED"),
        ("c", "COMPLETED"),
    ]
    # Forking the continuation at its first step runs that step's node again.
    b_step = (await agents.ListRunSteps(S.ListRunStepsRequest(parent=continued.name))).steps[0]
    request = S.ForkRunRequest(name=continued.name, checkpoint=b_step.checkpoint)
    request.values.update({"done": ["edited"]})
    fork = await wait_status(agents, (await agents.ForkRun(request)).run.name, *DONE)
    assert fork.status == S.RUN_STATUS_COMPLETED, fork.error
    assert list(fork.output["done"]) == ["edited", "b", "c"]

    # A run cancelled in node b, then the thread continued: b is the continuation's step; the
    # cancelled run shows it as it left it, not the continuation's result.
    hold = tmp_path / "hold"
    stopped = await create_run(
        agents,
        workflow="workflows/test-steps",
        thread=first.thread,
        input={"record": str(tmp_path / "record2"), "release": str(hold)},
    )
    await wait_node_b_started(tmp_path / "record2")
    await agents.CancelRun(S.CancelRunRequest(name=stopped.name))
    await wait_status(agents, stopped.name, S.RUN_STATUS_CANCELLED)
    hold.touch()
    after = await _continue(agents, first.thread, workflow="workflows/test-steps")
    after = await wait_status(agents, after.name, *DONE)
    assert after.status == S.RUN_STATUS_COMPLETED, after.error
    assert await _step_nodes(agents, after.name) == [("b", "COMPLETED"), ("c", "COMPLETED")]
    assert await _step_nodes(agents, stopped.name) == [("a", "COMPLETED"), ("b", "CANCELLED")]
