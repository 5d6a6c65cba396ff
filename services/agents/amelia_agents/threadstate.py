"""A thread's state as LangGraph Server users read and edit it: the latest checkpoint (or one
named), the history newest first, and state updates written as if a node had written them
(LangGraph's `get_state`, `get_state_history` and `update_state`).

A thread's checkpoints are read through the graph of its latest run: the graph knows the state's
keys, reducers and nodes, which the next tasks, the pending questions and an update's reducers
need. An update is written while the thread's row is locked (`FOR UPDATE`) and no run of it is
active: CreateRun updates that row when it records a run, so a run cannot start in between, and
the next run starts from the updated state (its input goes through the reducers on top of it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from langgraph.pregel import Pregel
from langgraph.types import StateSnapshot
from sqlalchemy import and_, select, text, update
from sqlalchemy.sql.elements import ColumnElement

from amelia.v1 import agents_pb2
from amelia_agents import convert, filtering, pagination, steps
from amelia_agents.models import ACTIVE_STATES, RunRow, RunState, ThreadRow
from amelia_agents.stateupdate import write_update
from amelia_agents.store import Store, now
from amelia_common import paging
from amelia_common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    check_request_id,
)

HISTORY_PAGE_DEFAULT = 10
HISTORY_PAGE_MAX = 1000
# An update's request id and what it wrote (`update_digest`), in its checkpoint's metadata.
_REQUEST_KEY = "amelia_request"
_DIGEST_KEY = "amelia_request_digest"
# How many of a thread's active runs a refusal names.
NAMED_RUNS = 3


# Keys a metadata filter may name: far more than a person writes, and each is a statement
# parameter (PostgreSQL takes at most 32,767 in all).
MAX_FILTER_KEYS = 256


def metadata_filter(values: Mapping[str, str], field: str = "metadata_filter") -> dict[str, str]:
    """A request's key/value filter, checked: at most MAX_FILTER_KEYS keys, keys non-empty, no
    NUL characters anywhere."""
    out = dict(values)
    if len(out) > MAX_FILTER_KEYS:
        raise InvalidArgumentError(
            f"{field} has {len(out)} keys; at most {MAX_FILTER_KEYS} (a thread must match each)"
        )
    for key, value in out.items():
        if not key or "\x00" in key:
            raise InvalidArgumentError(f"{field} key {key!r} is not a valid key")
        if "\x00" in value:
            raise InvalidArgumentError(f"{field} value for {key!r} contains a NUL character")
    return out


def metadata_condition(wanted: Mapping[str, str]) -> ColumnElement[bool] | None:
    """ListThreads' filter: the thread's metadata has each key's value, as ListRuns' filter
    compares `input.<key> = value` (as numbers or as text); None for no filter."""
    checked = metadata_filter(wanted)
    if not checked:
        return None
    return and_(*(filtering.json_equal(ThreadRow.meta, [k], v) for k, v in checked.items()))


def _equal(value: Any, raw: str) -> bool:
    """`json_equal` for a checkpoint's metadata, read in Python: as numbers (`raw` written as
    JSON writes a number, `filtering.json_number`: " 2" is text, not 2) or as text."""
    if value is None:
        return False
    number = filtering.json_number(raw)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and number is not None:
        with contextlib.suppress(ArithmeticError):
            if Decimal(str(value)) == number:
                return True
    return (value if isinstance(value, str) else json.dumps(value)) == raw


def _matches(metadata: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    return all(_equal(metadata.get(key), value) for key, value in wanted.items())


def _config(tid: uuid.UUID, checkpoint: str = "") -> RunnableConfig:
    configurable: dict[str, Any] = {"thread_id": str(tid), "checkpoint_ns": ""}
    if checkpoint:
        configurable["checkpoint_id"] = checkpoint
    return {"configurable": configurable}


def _checkpoint_of(config: Mapping[str, Any] | None) -> str:
    return str(((config or {}).get("configurable") or {}).get("checkpoint_id") or "")


def to_state(tid: uuid.UUID, snapshot: StateSnapshot) -> agents_pb2.ThreadState:
    """LangGraph's StateSnapshot as a ThreadState (JSON values only: others become text)."""
    metadata: dict[str, Any] = steps.plain_json(dict(snapshot.metadata or {}))
    state = agents_pb2.ThreadState(
        thread=f"threads/{tid}",
        checkpoint=_checkpoint_of(snapshot.config),
        parent_checkpoint=_checkpoint_of(snapshot.parent_config),
        next=list(snapshot.next),
        step=int(metadata.get("step") or 0),
    )
    values = steps.plain_json(snapshot.values)
    if isinstance(values, dict):
        state.values.update(values)
    asked_by: dict[str, str] = {}
    for task in snapshot.tasks:
        msg = state.tasks.add(task=task.id, node=task.name, error=str(task.error or ""))
        for interrupt in task.interrupts:
            asked_by[interrupt.id] = task.name
            msg.interrupts.add(node=task.name, id=interrupt.id).value.CopyFrom(
                convert.to_value(steps.plain_json(interrupt.value))
            )
        if task.result is not None:
            msg.update.CopyFrom(convert.to_value(steps.plain_json(task.result)))
    for interrupt in snapshot.interrupts:
        state.interrupts.add(node=asked_by.get(interrupt.id, ""), id=interrupt.id).value.CopyFrom(
            convert.to_value(steps.plain_json(interrupt.value))
        )
    state.metadata.update(metadata)
    if metadata.get(steps.RUN_KEY):
        state.run = f"runs/{metadata[steps.RUN_KEY]}"
    steps.set_timestamp(state.create_time, snapshot.created_at)
    return state


def _without_graph(stored: CheckpointTuple) -> StateSnapshot:
    """A checkpoint read without the graph that wrote it (a thread whose runs were all deleted:
    no run names its graph): its values (the state's channels), metadata and parent. Which
    nodes run next, and their tasks, need the graph: none are said (a run on the thread
    continues from it with its own graph)."""
    channels = stored.checkpoint.get("channel_values") or {}
    values = {k: v for k, v in channels.items() if not k.startswith("__") and ":" not in k}
    return StateSnapshot(
        values=values,
        next=(),
        config=stored.config,
        metadata=stored.metadata,
        created_at=stored.checkpoint.get("ts"),
        parent_config=stored.parent_config,
        tasks=(),
        interrupts=(),
    )


async def _history_without_graph(
    stored: AsyncIterator[CheckpointTuple],
) -> AsyncGenerator[StateSnapshot]:
    async for checkpoint in stored:
        yield _without_graph(checkpoint)


class ThreadStates:
    """The thread-state RPCs' work; the servicer checks names and maps nothing else."""

    def __init__(self, store: Store, checkpointer: BaseCheckpointSaver[Any]) -> None:
        self.store = store
        self.checkpointer = checkpointer

    async def _thread(self, name: str) -> uuid.UUID:
        tid = convert.thread_id(name)
        convert.found(await self.store.get_thread(tid), f"threads/{tid}")
        return tid

    async def _graph(self, tid: uuid.UUID) -> Pregel[Any] | None:
        """The graph the thread's state is read with (`_graph_run`; None: no run gives one)."""
        async with self.store.single_statements() as s:
            latest = await _graph_run(s, tid)
        return steps.compiled(latest, self.checkpointer) if latest is not None else None

    async def _known_checkpoint(self, tid: uuid.UUID, checkpoint: str) -> None:
        if await self.checkpointer.aget_tuple(_config(tid, checkpoint)) is None:
            raise NotFoundError(
                f"threads/{tid} has no checkpoint {checkpoint!r}; see ListThreadHistory"
            )

    async def get(self, name: str, checkpoint: str) -> agents_pb2.ThreadState:
        tid = await self._thread(name)
        if checkpoint:
            steps.checkpoint_id(checkpoint, "checkpoint")
            await self._known_checkpoint(tid, checkpoint)
        graph = await self._graph(tid)
        if graph is None:  # never run, or every run deleted: its checkpoints as they are
            stored = await self.checkpointer.aget_tuple(_config(tid, checkpoint))
            if stored is None:
                return agents_pb2.ThreadState(thread=f"threads/{tid}")
            return to_state(tid, _without_graph(stored))
        snapshot = await graph.aget_state(_config(tid, checkpoint))
        return to_state(tid, snapshot)

    async def check_continuable(
        self, tid: uuid.UUID, agent_id: str | None, workflow: str | None
    ) -> None:
        """INVALID_ARGUMENT unless a run without input can continue the thread: its latest
        checkpoint has nodes to run (`next`), on the graph of its latest run (the target)."""
        async with self.store.single_statements() as s:
            latest = await _graph_run(s, tid)
        snapshot = None
        if latest is not None:
            snapshot = await steps.compiled(latest, self.checkpointer).aget_state(_config(tid))
        if snapshot is None or not snapshot.next:
            raise InvalidArgumentError(nothing_to_continue(tid))
        assert latest is not None
        if (latest.agent_id, latest.workflow) != (agent_id, workflow):
            graph = (
                f"agents/{latest.agent_id}" if latest.agent_id else f"workflows/{latest.workflow}"
            )
            raise InvalidArgumentError(
                f"threads/{tid} continues on its graph, {graph}: run it with that target, or "
                "give run.input for a fresh start"
            )

    async def history(
        self, request: agents_pb2.ListThreadHistoryRequest
    ) -> tuple[list[agents_pb2.ThreadState], str]:
        """A page of the thread's checkpoints newest first, and the next page's token. Pages
        go by checkpoint id (ordered in time): checkpoints saved meanwhile are newer, so a page
        neither repeats nor skips one. A token carries its request's scope (AIP-158), so one
        reused for another thread, filter or `before` is told so."""
        tid = await self._thread(request.parent)
        scope = paging.request_scope(request)
        limit = paging.page_size(request.page_size, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX)
        wanted = metadata_filter(request.metadata_filter)
        before = ""
        if request.page_token:
            _, before = pagination.decode(request.page_token, scope)
            if not steps.is_checkpoint_id(before):
                raise InvalidArgumentError(paging.BAD_TOKEN)
        elif request.before:
            before = steps.checkpoint_id(request.before, "before")
            await self._known_checkpoint(tid, before)
        graph = await self._graph(tid)
        found: list[StateSnapshot] = []
        # Without a filter, PostgreSQL reads no more than the page (and one to know more
        # follow); a filter is applied here, as numbers or text (`_equal`), so reads on.
        most = None if wanted else limit + 1
        listed: AsyncGenerator[StateSnapshot]
        if graph is None:  # every run deleted: the checkpoints as they are
            listed = _history_without_graph(
                self.checkpointer.alist(
                    _config(tid), before=_config(tid, before) if before else None, limit=most
                )
            )
        else:
            listed = graph.aget_state_history(  # type: ignore[assignment]
                _config(tid), before=_config(tid, before) if before else None, limit=most
            )
        async with contextlib.aclosing(listed) as snapshots:
            async for snapshot in snapshots:
                if _matches(snapshot.metadata or {}, wanted):
                    found.append(snapshot)
                    if len(found) > limit:
                        break
        states = [to_state(tid, s) for s in found[:limit]]
        states = states[: convert.fitting(states)]
        if len(found) <= len(states):
            return states, ""
        last = found[len(states) - 1]
        when = datetime.fromisoformat(last.created_at) if last.created_at else datetime.now(UTC)
        return states, pagination.encode(when, states[-1].checkpoint, scope)

    async def _written_by(
        self, tid: uuid.UUID, request_id: str, digest: str
    ) -> agents_pb2.ThreadState | None:
        """The state the update with `request_id` wrote on the thread, if one did; ALREADY_EXISTS
        if that update had other values, as_node or checkpoint (as ResumeRun's retries)."""
        found = None
        async for stored in self.checkpointer.alist(
            _config(tid), filter={_REQUEST_KEY: request_id}, limit=1
        ):
            found = stored
        if found is None:
            return None
        if (found.metadata or {}).get(_DIGEST_KEY) != digest:
            raise AlreadyExistsError(
                f"request_id {request_id!r} already updated threads/{tid} with other values, "
                "as_node or checkpoint; a retry must repeat the same update, a new update needs "
                "a new request_id"
            )
        graph = await self._graph(tid)
        assert graph is not None, "a thread with an update has a run"
        return to_state(tid, await graph.aget_state(found.config))

    async def update(self, request: agents_pb2.UpdateThreadStateRequest) -> agents_pb2.ThreadState:
        """Write `values` as `as_node` on the thread's latest checkpoint (or the one named): a
        new head checkpoint. Refused while a run of the thread is active."""
        tid = convert.thread_id(request.thread)
        values = convert.json_from(request.values, "values")
        if request.checkpoint:
            steps.checkpoint_id(request.checkpoint, "checkpoint")
        check_request_id(request.request_id)
        digest = update_digest(values, request.as_node, request.checkpoint)
        async with self.store.sessions() as s, s.begin():
            # Locked until the update is written: CreateRun updates this row (its update_time)
            # when it records a run, so no run of the thread starts in between.
            locked = await s.scalar(
                select(ThreadRow.id).where(ThreadRow.id == tid).with_for_update()
            )
            if locked is None:
                raise convert.not_found(f"threads/{tid}")
            if request.request_id:  # a retry gets the state its first request wrote
                earlier = await self._written_by(tid, request.request_id, digest)
                if earlier is not None:
                    return earlier
            active = await s.scalar(
                select(RunRow)
                .where(RunRow.thread_id == tid, RunRow.status.in_(ACTIVE_STATES))
                .limit(1)
            )
            if active is not None:
                paused = ""
                if active.status == RunState.PAUSED.value:
                    paused = (
                        "; to answer with other values, cancel it, then fork it at its question's "
                        "step with the values (ForkRun; CLI `amelia runs fork "
                        f"runs/{active.id} <checkpoint> --values <json>`; HTTP POST "
                        f"/v1/runs/{active.id}:fork), or update the state and continue the "
                        "thread with a run without input"
                    )
                raise FailedPreconditionError(
                    f"threads/{tid} has a {active.status.lower()} run, runs/{active.id}: its "
                    f"state changes only between runs; wait for the run to end, or cancel it{paused}"
                )
            latest = await _graph_run(s, tid)
            if latest is None:
                raise FailedPreconditionError(
                    f"threads/{tid} has no run yet: its graph (the state's keys and nodes) is "
                    "its first run's; start a run, then update its state"
                )
            graph = steps.compiled(latest, self.checkpointer)
            if request.checkpoint:
                await self._known_checkpoint(tid, request.checkpoint)
            config = _config(tid, request.checkpoint)
            if request.request_id:
                config["metadata"] = {_REQUEST_KEY: request.request_id, _DIGEST_KEY: digest}
            written = await write_update(graph, config, values, request.as_node)
            snapshot = await graph.aget_state(written)
            # An edit is activity: ListThreads' `update_time desc` lists the thread first (as
            # LangGraph's update_state moves its thread's updated_at).
            await s.execute(update(ThreadRow).where(ThreadRow.id == tid).values(update_time=now()))
        return to_state(tid, snapshot)


def nothing_to_continue(tid: uuid.UUID) -> str:
    """Why a run without input cannot run: said by CreateRun, and by the run itself when it
    starts (an enqueued run can find the nodes it was to continue run by the run before it)."""
    return (
        f"threads/{tid} has nothing to continue (its latest checkpoint has no node to run): "
        "run.input is required"
    )


async def active_runs(store: Store, tid: uuid.UUID) -> list[RunRow]:
    """The thread's active runs for a refusal to name: the one holding the thread first, then
    those waiting behind it, oldest first; at most NAMED_RUNS + 1 (more than `named` shows)."""
    async with store.single_statements() as s:
        found = await s.scalars(
            select(RunRow)
            .where(RunRow.thread_id == tid, RunRow.status.in_(ACTIVE_STATES))
            .order_by(RunRow.queued_behind.is_not(None), RunRow.create_time, RunRow.id)
            .limit(NAMED_RUNS + 1)
        )
        return list(found.all())


def named(runs: list[RunRow]) -> str:
    """`an active run, runs/X (RUNNING)` or `2 active runs: runs/X (RUNNING), runs/Y (QUEUED
    behind runs/X)`: each with its status as GetRun shows it (a QUEUED run holding the thread
    was admitted but has not started)."""

    def one(run: RunRow) -> str:
        status = run.status
        if status == RunState.QUEUED.value:
            behind = run.queued_behind
            status += f" behind runs/{behind}" if behind else ", not started yet"
        return f"runs/{run.id} ({status})"

    if not runs:
        return "an active run"
    if len(runs) == 1:
        return f"an active run, {one(runs[0])}"
    shown = ", ".join(one(r) for r in runs[:NAMED_RUNS])
    if len(runs) > NAMED_RUNS:
        return f"more than {NAMED_RUNS} active runs: {shown}, and more"
    return f"{len(runs)} active runs: {shown}"


# The run that wrote the thread's latest checkpoint written by a run (a state update's has no
# run), read backwards through the checkpoints' primary key.
_CHECKPOINT_RUN = text(
    """
    SELECT CAST(metadata ->> 'amelia_run' AS uuid) FROM checkpoints
    WHERE thread_id = :thread AND checkpoint_ns = '' AND metadata ? 'amelia_run'
    ORDER BY checkpoint_id DESC LIMIT 1
    """
)


async def _graph_run(s: Any, tid: uuid.UUID) -> RunRow | None:
    """The run whose graph (target and agent snapshot) the thread's state is read and written
    with: the thread's latest run; for a thread with none, the run that wrote its latest
    checkpoint — a CopyThread's copy has its source's checkpoints and no run, and is read with
    the graph that wrote them. None: no run gives the graph (a thread never run, or whose runs
    were all deleted with DeleteRun: its checkpoints are then read without one, `_without_graph`)."""
    latest: RunRow | None = await s.scalar(_latest_run(tid))
    if latest is not None:
        return latest
    writer = await s.scalar(_CHECKPOINT_RUN, {"thread": str(tid)})
    return await s.get(RunRow, writer) if writer is not None else None


def _latest_run(tid: uuid.UUID) -> Any:
    return (
        select(RunRow)
        .where(RunRow.thread_id == tid)
        .order_by(RunRow.create_time.desc(), RunRow.id.desc())
        .limit(1)
    )


def update_digest(values: Any, as_node: str, checkpoint: str) -> str:
    """What an update (UpdateThreadState's, a fork's) wrote, for telling a retry with its
    request id from another request."""
    text = json.dumps([values, as_node, checkpoint], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
