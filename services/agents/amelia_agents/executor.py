"""Executes one pick-up of a run: a LangGraph graph driven to its end, a pause, or a stop.

The graph is compiled with the PostgreSQL checkpointer and runs with thread id = the run's
thread (so runs in a thread share memory) and durability "sync" (each step's checkpoint is
stored before the next step starts). Where a pick-up starts comes from the thread's latest
checkpoint, whose metadata names the run that wrote it:

- not written by this run → a fresh start with the run's input;
- this run's, with a pending interrupt → resume with the stored answer (`Command(resume=…)`);
- this run's, with nodes left → continue (`None`): nodes already checkpointed are not re-run
  (also when a step's writes are stored and its checkpoint, written behind, is not);
- this run's, finished → only the recording of the end was lost; record it.

While the graph runs, LangGraph's `tasks` stream becomes `run.node.started|finished` events (a
node's end once its writes are stored: `EndsAfterWrites`) and the nodes' custom stream (see
`runtime`) becomes `run.token`, `run.tool.*`, ... events; a later
pick-up first tells of the nodes an earlier one finished without their end reaching the log
(`_tell_finished_nodes`). The pick-up ends with the run COMPLETED, FAILED (timeout, exception,
model error), CANCELLED (`Attempt.cancel`), PAUSED, or not at all — the job goes back to the
queue and a worker continues from the checkpoint — when the worker shuts down, when PostgreSQL
or NATS cannot be reached (`outages`: the exception escapes to the worker), or when another
worker took the run over (`Attempt.handover`, raising `HandoverError`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.constants import CONFIG_KEY_CHECKPOINTER
from langgraph.types import Command

from amelia.v1 import events_pb2
from amelia_agents import (
    checkpoints,
    partial,
    runstate,
    runtime,
    steps,
    threadstate,
    workflows,
)
from amelia_agents.lifecycle import TOKEN_TYPE, RunEvents
from amelia_agents.llm import ModelError, Usage, slots
from amelia_agents.llm.base import CUT
from amelia_agents.locks import LockLostError, still_held
from amelia_agents.models import RunRow, RunState
from amelia_agents.outages import infrastructure_outage
from amelia_agents.pricing import NodeUsage
from amelia_agents.store import Store
from amelia_common import telemetry
from amelia_common.errors import POSTGRES, UnavailableError
from amelia_common.eventlog import EventLogUnavailableError, PublishPipeline, event_data
from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.agents.executor")

# What LangGraph's "values" stream sends, in place of a state, when the graph pauses.
INTERRUPT_KEY = "__interrupt__"

# How long a stopped graph may take to unwind (kill its subprocess, close its HTTP stream).
STOP_GRACE_SECONDS = 5.0

# How long a model call's usage waits to be written with the calls after it (or with the run's
# end, if it comes first): a pick-up that dies loses at most this much of its usage.
USAGE_WRITE_SECONDS = 0.5


@dataclass
class Attempt:
    """One worker's hold on a run: how to cancel it or hand it over, and when it is over."""

    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    # Another worker holds the run now: stop without recording anything.
    handover: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: str = ""


@dataclass
class GraphEnd:
    """Where the graph stopped, as its stream told it (no read of the checkpoint it just wrote):
    the state after its last step, and the first interrupt left pending if it paused."""

    values: dict[str, Any] = field(default_factory=dict)
    interrupt: dict[str, Any] | None = None  # {"node", "value", "id"}
    ran: bool = False  # a node started: without one, `values` is what earlier runs wrote
    # Nodes with a model reply cut at max_tokens (`run.model.cut`) not finished yet, and
    # whether the last reply of this pick-up was cut (said by the node's end and the output).
    cut_nodes: set[str] = field(default_factory=set)
    cut_pending: bool = False
    last_cut: bool = False

    def told(self, event_type: str, data: dict[str, Any]) -> None:
        """Note a model call's cut (`run.model.cut`), or its end (its usage)."""
        if event_type == CUT:
            self.cut_nodes.add(str(data.get("node", "")))
            self.cut_pending = True
        elif event_type == runtime.USAGE_TYPE:
            self.last_cut, self.cut_pending = self.cut_pending, False


class HandoverError(Exception):
    """The pick-up stopped because another worker has the run now; nothing was recorded."""


class UsageWriter:
    """A pick-up's token usage, added to its run: a node's model call does not wait for
    PostgreSQL. What the calls used is held for USAGE_WRITE_SECONDS (calls made meanwhile add
    to it), then written in one UPDATE; what is still held when the graph ends goes into the
    statement recording the run's end (`take`, `Store.finish`) rather than one of its own — a
    run of quick nodes writes its usage once, with its end, instead of once per model call.
    `flush` returns once everything is stored (raising the error of a write that failed).

    The same UPDATE keeps the tokens of the pick-up's nodes not finished yet (`RunRow.open_*`:
    a call adds to them, a node's end takes its calls off once its writes are stored,
    `finished`), which the next pick-up counts as interrupted if this one stops first."""

    def __init__(
        self,
        store: Store,
        run_id: uuid.UUID,
        attempt: int,
        delay: float = USAGE_WRITE_SECONDS,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.attempt = attempt
        self.delay = delay
        self._pending = (0, 0)
        self._open = (0, 0)  # the change of the open tokens not written yet
        self._task: asyncio.Task[None] | None = None
        self._writing = False  # the task is past its wait: its UPDATE may be under way

    def add(self, usage: Usage) -> None:
        self._pending = (
            self._pending[0] + usage.input_tokens,
            self._pending[1] + usage.output_tokens,
        )
        self._open = (self._open[0] + usage.input_tokens, self._open[1] + usage.output_tokens)
        self._write_soon()

    def finished(self, input_tokens: int, output_tokens: int) -> None:
        """A node's writes are stored: its calls' tokens are no longer at stake."""
        if input_tokens or output_tokens:
            self._open = (self._open[0] - input_tokens, self._open[1] - output_tokens)
            self._write_soon()

    def _write_soon(self) -> None:
        task = self._task
        if task is None or (task.done() and not task.cancelled() and task.exception() is None):
            self._task = asyncio.create_task(self._write_later())

    async def _write_later(self) -> None:
        await asyncio.sleep(self.delay)
        self._writing = True
        try:
            await self._write()
        finally:
            self._writing = False

    async def _write(self) -> None:
        while self._pending != (0, 0) or self._open != (0, 0):
            (input_tokens, output_tokens), self._pending = self._pending, (0, 0)
            opened, self._open = self._open, (0, 0)
            try:
                await self.store.add_usage(
                    self.run_id, input_tokens, output_tokens, opened, self.attempt
                )
            except BaseException:
                self._pending = (
                    self._pending[0] + input_tokens,
                    self._pending[1] + output_tokens,
                )
                self._open = (self._open[0] + opened[0], self._open[1] + opened[1])
                raise

    async def _settle(self) -> None:
        """No write in the background any more: a waiting one is called off, one under way
        awaited (its error raised)."""
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done() and not self._writing:
            task.cancel()
        await asyncio.wait((task,))
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure

    async def take(self) -> tuple[int, int]:
        """The (input, output) tokens not stored yet, for the caller's own statement; this
        writer stores nothing more of them. (The run ends there: no later pick-up counts its
        open tokens, so their change is dropped.)"""
        await self._settle()
        pending, self._pending, self._open = self._pending, (0, 0), (0, 0)
        return pending

    async def flush(self) -> None:
        await self._settle()
        await self._write()


# An event held by `EndsAfterWrites`: the event, its position among those given, the task whose
# writes it waits for, and what to call once it is written.
Held = tuple[events_pb2.Event, int, str | None, Callable[[], None] | None]


class EndsAfterWrites:
    """A pick-up's streamed events on their way to its `PublishPipeline`, in the order the
    graph streamed them, a node's end (`run.node.finished`) held until LangGraph's writes of
    its task are stored (`checkpoints.RunSaver.writes_stored`) — and with it whatever the
    stream gave after it (a parallel node's tokens), so the log keeps the stream's order.

    Why: LangGraph hands a task's end to the stream while the task's writes are still on their
    way to PostgreSQL. Published at once, the end could be in the log with the writes lost (the
    database gone before they were stored): the next pick-up ran the node again, and a client
    that had kept the node's text — it had finished — showed it twice. An end in the log now
    means LangGraph finds the node's writes and does not run it again. Writes that could not
    be stored leave their end untold: the pick-up stops (LangGraph raises their error) and the
    next one runs the node again.

    The held events go out from a task of their own, as soon as the writes are stored: the
    graph is read on meanwhile, so LangGraph makes the step's checkpoint while the writes are
    stored, as before (waiting in the stream's loop put that work after them, on every node's
    way to the next: +1.7 ms on the bench's 5-node run, measured). Nothing is held when the
    saver is not a `RunSaver` (no writes to wait for)."""

    def __init__(
        self, pipeline: PublishPipeline, saver: checkpoints.RunSaver | None = None
    ) -> None:
        self.pipeline = pipeline
        self.saver = saver
        # Held: (event, its position among the events given, the task whose writes it waits for,
        # what to call once it is written).
        self._held: collections.deque[Held] = collections.deque()
        self._releasing: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._given = 0  # events given to `submit`
        self._passed = 0  # of them, written to the pipeline (or an end left untold), in order
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []  # `settled` callers

    async def submit(
        self,
        event: events_pb2.Event,
        after_writes_of: str | None = None,
        written: Callable[[], None] | None = None,
    ) -> None:
        """Write `event` (its data checked), after the writes of task `after_writes_of` are
        stored and after every event given before it; then call `written` (not when the
        writes failed: the event is not written)."""
        self._raise_failure()
        position, self._given = self._given, self._given + 1
        if not self._held:
            stored = True if after_writes_of is None else self._stored_now(after_writes_of)
            if stored is not None:
                if stored:
                    await self.pipeline.submit(event, data_checked=True)
                    if written is not None:
                        written()
                self._pass()
                return
        self._held.append((event, position, after_writes_of, written))
        if self._releasing is None:
            self._releasing = asyncio.create_task(self._release())

    def _stored_now(self, task: str) -> bool | None:
        """Whether the task's writes are stored (False: one failed), None while one is not."""
        return True if self.saver is None else self.saver.writes_stored_now(task)

    async def _release(self) -> None:
        try:
            while self._held:
                event, _, task, written = self._held[0]
                if task is None or self.saver is None or await self.saver.writes_stored(task):
                    await self.pipeline.submit(event, data_checked=True)
                    if written is not None:
                        written()
                self._held.popleft()
                self._pass()
        except BaseException as exc:
            self._failure = exc
            self._wake(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._releasing = None

    def _pass(self) -> None:
        self._passed += 1
        if self._waiting:
            ready = [(at, waiter) for at, waiter in self._waiting if at <= self._passed]
            self._waiting = [(at, waiter) for at, waiter in self._waiting if at > self._passed]
            for _, waiter in ready:
                if not waiter.done():
                    waiter.set_result(None)

    def _wake(self, failure: BaseException) -> None:
        waiting, self._waiting = self._waiting, []
        for _, waiter in waiting:
            if not waiter.done():
                waiter.set_exception(
                    EventLogUnavailableError(f"events held back failed: {failure!r}")
                )

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def settled(self, task: str) -> None:
        """Return once every event given so far is stored (as `PublishPipeline.settle_written`)
        — but for `task`'s own end and what came after it, held until this task's writes are
        stored: what the task's writes wait for (`RunSaver.events_stored`). So no writes wait,
        through the ends they wait for, for themselves (each waits only for events before its
        own end)."""
        given = next((at for _, at, held, _ in self._held if held == task), self._given)
        if self._passed < given:
            self._raise_failure()
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append((given, waiter))
            await waiter
        await self.pipeline.settle_written()

    async def release(self) -> None:
        """Write the held events (an end whose writes failed left untold), without waiting for
        NATS to store them: for a graph that failed, whose writes LangGraph saw through before
        it raised."""
        releasing = self._releasing
        if releasing is not None:
            await asyncio.wait((releasing,))

    async def flush(self) -> None:
        """Wait until every event given is stored (raising as `PublishPipeline.flush`)."""
        releasing = self._releasing
        if releasing is not None:
            await asyncio.wait((releasing,))
        self._raise_failure()
        await self.pipeline.flush()

    def abandon(self) -> None:
        """Stop: the held events are dropped (the pick-up stopped), the pipeline abandoned."""
        if self._releasing is not None:
            self._releasing.cancel()
        self._held.clear()
        self._wake(asyncio.CancelledError())
        self.pipeline.abandon()


# Types JSON gives back as they are (exactly these: a subclass, an enum, may encode otherwise).
_FLAT_JSON = (str, int, float, bool)


def _jsonable(value: Any) -> Any:
    """`value` as JSON would give it back (anything else as its `str`). A flat dict of strings,
    numbers, booleans and None — a token's data, most node events' — is that already: copied."""
    if isinstance(value, dict) and all(
        type(key) is str and (item is None or type(item) in _FLAT_JSON)
        for key, item in value.items()
    ):
        return dict(value)
    return json.loads(json.dumps(value, default=str))


def run_timeout(row: RunRow, workflow: workflows.Workflow) -> float:
    if row.timeout_seconds:
        return float(row.timeout_seconds)
    if row.agent_config and row.agent_config.get("timeout_seconds"):
        return float(row.agent_config["timeout_seconds"])
    return workflow.default_timeout


def graph_config(row: RunRow) -> dict[str, Any]:
    return {
        "configurable": {"thread_id": str(row.thread_id)},
        "metadata": {"amelia_run": str(row.id)},
        "recursion_limit": 200,
    }


class CompiledGraphs:
    """Each workflow's graph compiled once per agent configuration, not once per pick-up.

    Building and compiling a graph costs more CPU than running it through the mesh (a few ms
    for five nodes, growing with them); a compiled LangGraph graph holds no run's state (that
    is in the config and the checkpointer), so concurrent runs share it. A workflow's `build`
    depends on the agent configuration alone; a workflow registered again (a new object) or
    tracing switched on or off compiles afresh.
    """

    def __init__(self, checkpointer: BaseCheckpointSaver[Any], size: int = 64) -> None:
        self.checkpointer = checkpointer
        self.size = size
        self._graphs: collections.OrderedDict[
            tuple[str, str, bool], tuple[workflows.Workflow, Any]
        ] = collections.OrderedDict()

    def compiled(self, workflow: workflows.Workflow, agent: dict[str, Any] | None) -> Any:
        key = (
            workflow.name,
            json.dumps(agent, sort_keys=True, default=str),
            telemetry.tracing_enabled(),
        )
        cached = self._graphs.get(key)
        if cached is not None and cached[0] is workflow:
            self._graphs.move_to_end(key)
            return cached[1]
        graph = telemetry.traced_nodes(workflow.build(agent)).compile(
            checkpointer=self.checkpointer
        )
        self._graphs[key] = (workflow, graph)
        while len(self._graphs) > self.size:
            self._graphs.popitem(last=False)
        return graph


class Executor:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        events: RunEvents,
        checkpointer: BaseCheckpointSaver[Any],
    ) -> None:
        self.settings = settings
        self.store = store
        self.events = events
        self.checkpointer = checkpointer
        self.graphs = CompiledGraphs(checkpointer)

    async def execute(self, row: RunRow, attempt: Attempt) -> str:
        """Run the claimed `row` (status RUNNING) until it ends or pauses; returns the outcome."""
        target = workflows.AGENT_WORKFLOW if row.agent_id else (row.workflow or "")
        workflow = workflows.get(target)
        if workflow is None:
            return await self._fail(row, f"workflow {target!r} is not available on this worker")
        if row.open_input_tokens or row.open_output_tokens:
            # An earlier pick-up stopped (or died) before its nodes using these finished: they
            # run again, their calls' tokens were spent on an interrupted attempt.
            await self.store.count_interrupted(row.id, row.attempt)
        # The pick-up's checkpoints go through one connection held for it (`checkpoints`),
        # lent to the shared compiled graph through its config.
        async with checkpoints.for_pickup(self.checkpointer) as saver:
            return await self._execute(row, attempt, workflow, saver)

    async def _execute(
        self,
        row: RunRow,
        attempt: Attempt,
        workflow: workflows.Workflow,
        saver: BaseCheckpointSaver[Any],
    ) -> str:
        target = workflow.name
        timeout = run_timeout(row, workflow)
        try:
            graph = self.graphs.compiled(workflow, row.agent_config)
            config = graph_config(row)
            if saver is not self.checkpointer:
                config["configurable"][CONFIG_KEY_CHECKPOINTER] = saver
            if isinstance(saver, checkpoints.RunSaver):
                saver.keep_latest_read()  # LangGraph's own first read is this one
            snapshot = await graph.aget_state(config)
        except Exception as exc:
            if infrastructure_outage(exc):
                raise  # not the workflow's fault: the worker tries again later
            log.exception("cannot build graph", run=str(row.id))
            return await self._fail(row, f"cannot build workflow {target!r}: {exc}")

        mine = (snapshot.metadata or {}).get("amelia_run") == str(row.id)
        graph_input: Any
        fork: dict[str, Any] | None = None
        if not mine and not (row.input is None and row.has_resume):
            # A run created without input continues the thread (`None`: LangGraph runs the
            # latest checkpoint's `next`). Its interrupt writes no checkpoint of its own, so
            # once answered it is resumed below although the head is not its. CreateRun saw
            # nodes to continue, but a run enqueued before this one may have run them since.
            if row.input is None and not snapshot.next:
                return await self._fail(row, threadstate.nothing_to_continue(row.thread_id))
            if row.input is None:  # its first step is on another's checkpoint: mark it its
                await checkpoints.mark_continued(saver, snapshot.config, str(row.id))
            graph_input = None if row.input is None else workflow.to_state(row.input)
            kind = "start"
        elif snapshot.interrupts:
            pending = snapshot.interrupts[0]
            answered = (row.interrupt or {}).get("id")
            if not row.has_resume or (answered and answered != pending.id):
                # The graph paused (again) but a worker died before the pause was recorded;
                # a stored answer belongs to an earlier question.
                if row.attempt > 1:
                    await self._tell_finished_nodes(row, saver)
                return await self._pause(row, _pending_interrupt(snapshot))
            kind, graph_input = "answer", Command(resume={pending.id: row.resume_value})
        elif snapshot.next or snapshot.tasks:
            # Nodes left — or a step whose nodes' writes are stored but whose checkpoint is not
            # (written behind when the worker stopped: `next` leaves out tasks with writes, so
            # it is empty though the graph has not ended): LangGraph applies them and goes on.
            # A fork's first pick-up starts from the checkpoint `steps.write_fork` made: a
            # start, not a worker's redelivery.
            fork = steps.forked_from(snapshot)
            kind, graph_input = ("fork" if fork else "redelivered"), None
        else:
            # The graph reached its end but its end was not recorded (PostgreSQL went away
            # then): this pick-up only records it, and says it took the run over first.
            if row.attempt > 1:
                await self._tell_finished_nodes(row, saver)
                await self.events.publish(
                    self.events.event(row, "run.resumed", {"reason": "redelivered"})
                )
            return await self._complete(row, workflow, snapshot.values)

        if row.attempt > 1:  # (a first pick-up has no earlier one's nodes to tell of)
            await self._tell_finished_nodes(row, saver)
        # The pick-up's events (its start, nodes, tokens) are written as they come and their
        # acknowledgements awaited together at the end of the graph (order kept).
        pipeline = self.events.event_log.pipeline()
        run_saver = saver if isinstance(saver, checkpoints.RunSaver) else None
        ordered = EndsAfterWrites(pipeline, run_saver)
        if run_saver is not None:
            run_saver.events_stored = ordered.settled  # a node's result after its events
        await self.events.started(row, kind, timeout, pipeline, forked_from=fork)
        ctx = runtime.RunContext(
            settings=self.settings,
            run=f"runs/{row.id}",
            attempt=row.attempt,
            agent=row.agent_config,
            retry_attempts=int(
                (row.agent_config or {}).get("retry_attempts", runtime.DEFAULT_RETRY_ATTEMPTS)
            ),
        )
        # A model call records its usage here directly (a cancelled one too, see `runtime`);
        # what is not stored when the graph ends goes into the statement recording the end.
        usage = UsageWriter(self.store, row.id, row.attempt)
        ctx.store_usage = usage.add
        # The run's waits for a slot of the local model are not its time (`llm.slots`).
        slot_waits = slots.RunWaits()
        token = slots.RUN_WAITS.set(slot_waits)  # the graph's task copies it
        try:
            drive = asyncio.create_task(
                self._drive(row, graph, graph_input, config, ctx, ordered, usage)
            )
        finally:
            slots.RUN_WAITS.reset(token)
        stops = [
            asyncio.create_task(attempt.cancel_requested.wait()),
            asyncio.create_task(attempt.handover.wait()),
        ]
        started = time.monotonic()
        try:
            while True:
                left = started + timeout + slot_waits.seconds() - time.monotonic()
                done, _ = await asyncio.wait(
                    {drive, *stops}, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED
                )
                if done or started + timeout + slot_waits.seconds() <= time.monotonic():
                    break
        except asyncio.CancelledError:
            # The worker is shutting down: stop here, the checkpoint keeps the progress.
            await self._stop(drive)
            raise
        finally:
            for stop in stops:
                stop.cancel()

        if drive not in done:
            try:  # asked while the graph is held: stopping it waits for what holds it
                if not (attempt.handover.is_set() or attempt.cancel_requested.is_set()):
                    await self._not_an_outage(row, timeout)
            finally:
                await self._stop(drive)
        # The graph's checkpoints are written behind (`checkpoints.RunSaver`): all stored
        # before the run's end or pause is recorded.
        unstored = await _drain(saver)
        if drive not in done:
            if attempt.handover.is_set():
                raise HandoverError(f"runs/{row.id} is held by another worker now")
            if attempt.cancel_requested.is_set():
                return await self._cancelled(row)
            return await self._timed_out(row, timeout)
        try:
            end = drive.result()
            if unstored is not None:
                raise unstored
        except (ModelError, runtime.NodeError) as exc:
            return await self._fail(row, str(exc))
        except Exception as exc:  # a node's exception fails the run
            if isinstance(exc, LockLostError):
                raise  # another worker has the run now (`locks`): nothing more is written
            await _stored(usage)  # (a failed graph's were stored as it stopped)
            if infrastructure_outage(exc):
                raise  # a checkpoint or event that could not be written: try again later
            log.info("run failed", run=str(row.id), error=repr(exc))
            return await self._fail(row, f"{type(exc).__name__}: {exc}")
        if attempt.cancel_requested.is_set() or end.interrupt is not None:
            await _stored(usage)
            if end.interrupt is None:
                return await self._cancelled(row)
            return await self._pause(row, end.interrupt)
        if kind == "start" and not end.ran:
            # The stream's state is then the thread's as earlier runs left it: not this
            # run's output.
            await _stored(usage)
            if row.input is None:
                return await self._fail(row, threadstate.nothing_to_continue(row.thread_id))
            return await self._fail(row, "the graph ran no node for the run's input")
        return await self._complete(row, workflow, end.values, usage, cut=end.last_cut)

    async def _tell_finished_nodes(self, row: RunRow, saver: BaseCheckpointSaver[Any]) -> None:
        """Before a later pick-up says `run.resumed`: `run.node.finished` (`recovered`) for each
        node an earlier pick-up started whose result is stored but whose end is not in the log.

        A node's writes are stored once its events before them are in the log, and its
        `run.node.finished` is published after (`EndsAfterWrites`): a pick-up that lost NATS
        (or died) between the two leaves a node LangGraph does not run again.
        A client told by the rule to drop what the interrupted node streamed since its
        `run.node.started` on `run.resumed` would drop that node's whole text; told first that
        it finished, it keeps it. The log says which nodes started and did not finish (a node
        whose end is there — a worker that died before the next checkpoint — is not told of
        again), the checkpoint writes which of those finished. A log or database out of
        reach stops the pick-up as any outage does (the next one tells of them)."""
        try:
            unfinished = await self.events.unfinished_nodes(row)
            finished = await checkpoints.finished_tasks(saver, str(row.thread_id), unfinished)
            told = [
                self.events.recovered_finish(row, task, node)
                for task, node in unfinished.items()
                if task in finished
            ]
            if not told:
                return
            pipeline = self.events.event_log.pipeline()
            for event in told:
                await pipeline.submit(event, data_checked=True)
            await pipeline.flush()
        except Exception as exc:
            if isinstance(exc, LockLostError) or infrastructure_outage(exc):
                raise
            # Not worth the run: it goes on, as before this was told.
            log.exception("cannot tell of the nodes an earlier pick-up finished", run=str(row.id))
            return
        log.info(
            "told of nodes an earlier pick-up finished",
            run=str(row.id),
            nodes=[event_data(event)["node"] for event in told],
        )

    async def _stop(self, drive: asyncio.Task[GraphEnd]) -> None:
        drive.cancel()
        with contextlib.suppress(BaseException):
            async with asyncio.timeout(STOP_GRACE_SECONDS):
                await asyncio.shield(drive)

    async def _drive(
        self,
        row: RunRow,
        graph: Any,
        graph_input: Any,
        config: dict[str, Any],
        ctx: runtime.RunContext,
        pipeline: EndsAfterWrites,
        stored_usage: UsageWriter,
    ) -> GraphEnd:
        """Run the graph, its streamed events sent through `pipeline` (a node's end once its
        writes are stored), all stored on return; where it stopped. Stopped or failed, the
        usage of the calls made is stored on the way out (`stored_usage`); ended, it is left
        for the run's end."""
        token = runtime.bind(ctx)
        end = GraphEnd()
        started: dict[str, float] = {}
        usage = NodeUsage(self.settings.MODEL_PRICES)
        ended = False
        tokens_flowing = False  # the last event written was a token
        try:
            async for mode, chunk in graph.astream(
                graph_input, config, stream_mode=["tasks", "custom", "values"], durability="sync"
            ):
                await still_held()  # no event once another worker has the run (`locks`)
                if mode == "values":
                    if isinstance(chunk, dict) and INTERRUPT_KEY not in chunk:
                        end.values = chunk
                elif mode == "tasks":
                    end.ran = True
                    tokens_flowing = False
                    event, used = self._task_event(row, chunk, started, usage, end.cut_nodes)
                    if event.type == "run.node.finished":
                        # Its calls are no longer at stake once its writes are stored.
                        await pipeline.submit(
                            event,
                            after_writes_of=str(chunk.get("id", "")),
                            written=functools.partial(
                                stored_usage.finished,
                                int(used.get("input_tokens", 0)),
                                int(used.get("output_tokens", 0)),
                            ),
                        )
                    else:
                        await pipeline.submit(event)
                    if end.interrupt is None and chunk.get("interrupts"):
                        first = chunk["interrupts"][0]
                        end.interrupt = _interrupt(
                            str(chunk.get("name", "")), first.get("value"), first.get("id")
                        )
                elif mode == "custom" and isinstance(chunk, dict) and runtime.EVENT_KEY in chunk:
                    event_type = chunk[runtime.EVENT_KEY]
                    data = chunk.get("data") or {}
                    end.told(event_type, data)
                    if event_type == runtime.USAGE_TYPE:
                        usage.add(data)  # the node's, for its run.node.finished
                    else:
                        await pipeline.submit(self.events.event(row, event_type, _jsonable(data)))
                        if event_type == TOKEN_TYPE and not tokens_flowing:
                            # The first token of a burst goes to NATS now (the loop runs
                            # nats-py's flusher first), not after the rest of the burst and
                            # the node's end: ~0.5 ms sooner at the client (docs/performance.md,
                            # session 18). Tokens a model streams one by one go out as they
                            # come anyway: the loop writes while the node waits for the next.
                            await asyncio.sleep(0)
                        tokens_flowing = event_type == TOKEN_TYPE
            await pipeline.flush()
            ended = True
            return end
        except Exception as exc:
            # The graph failed on its own (a node's exception): the ends it told before go out,
            # a failing node's with its error. Not after an outage (the next pick-up tells of
            # the nodes whose writes were stored) nor once another worker has the run.
            if not (isinstance(exc, LockLostError) or infrastructure_outage(exc)):
                with contextlib.suppress(Exception):
                    await pipeline.release()
            raise
        finally:
            if not ended:
                await _stored(stored_usage)
            runtime.unbind(token)
            # Stopped or failed: what was written is stored by NATS; nobody waits for it.
            pipeline.abandon()

    def _task_event(
        self,
        row: RunRow,
        chunk: dict[str, Any],
        started: dict[str, float],
        usage: NodeUsage,
        cut_nodes: set[str],
    ) -> tuple[events_pb2.Event, dict[str, Any]]:
        """The node's `run.node.started` or `run.node.finished`, and the usage of its model
        calls the latter carries ({} for the former); `finish_reason` "length" when one of
        them was cut at max_tokens (`cut_nodes`)."""
        node = str(chunk.get("name", ""))
        task_id = str(chunk.get("id", ""))
        if "input" in chunk or "triggers" in chunk:
            started[task_id] = time.perf_counter()
            event = self.events.event(row, "run.node.started", {"node": node, "task": task_id})
            return event, {}
        data: dict[str, Any] = {"node": node, "task": task_id}
        if task_id in started:
            data["duration_seconds"] = round(time.perf_counter() - started.pop(task_id), 6)
        if chunk.get("error") is not None:
            data["error"] = str(chunk["error"])
        if chunk.get("interrupts"):
            data["interrupted"] = True
        if node in cut_nodes:
            cut_nodes.discard(node)
            data["finish_reason"] = "length"
        used = usage.take(node)
        data.update(used)
        return self.events.event(row, "run.node.finished", data), used

    async def _complete(
        self,
        row: RunRow,
        workflow: workflows.Workflow,
        values: dict[str, Any],
        usage: UsageWriter | None = None,
        cut: bool = False,
    ) -> str:
        """Record the run COMPLETED with its output and the usage `usage` has not stored yet,
        in one statement; `cut`: its last model reply was cut at max_tokens, which the output
        says (`finish_reason` "length", as OpenAI's response does)."""
        try:
            output = _jsonable(workflow.to_output(values or {}))
            if cut and isinstance(output, dict):
                output["finish_reason"] = "length"
        except Exception as exc:  # noqa: BLE001
            if usage is not None:
                await _stored(usage)
            return await self._fail(row, f"cannot build the run's output: {exc}")
        added = await usage.take() if usage is not None else (0, 0)
        return await self._ended(
            await self.store.finish(
                row.id, RunState.COMPLETED, output=output, usage=added, attempt=row.attempt
            )
        )

    async def _fail(self, row: RunRow, error: str) -> str:
        return await self._ended(
            await self.store.finish(row.id, RunState.FAILED, error=error, attempt=row.attempt)
        )

    async def _ended(self, finished: tuple[RunRow | None, bool]) -> str:
        """Publish the end `store.finish` stored (or the cancel that won over it)."""
        after, _ = finished
        if after is None:
            return "gone"
        # Cancelled meanwhile: the run ends CANCELLED whatever the graph did.
        await self.events.terminal(after)
        return after.status

    async def _not_an_outage(self, row: RunRow, timeout: float) -> None:
        """Before a run that ran out of time fails: PostgreSQL answering now, else UNAVAILABLE.
        A frozen or unreachable PostgreSQL holds the graph's writes (a node's, a checkpoint's)
        without an error, so its time ran out waiting for the database, not on its own work
        (QA s20: a run whose node had ended failed "took longer than 60s; give a run more
        time"). Raised, the outage gives the job back as any other does; the next pick-up
        continues from the checkpoint, with its whole time again."""
        try:
            async with asyncio.timeout(self.settings.DATABASE_CONNECT_TIMEOUT_SECONDS):
                await self.store.ping()
        except Exception as exc:
            log.warning("run out of time while PostgreSQL did not answer", run=str(row.id))
            raise UnavailableError(
                POSTGRES,
                f"no answer when runs/{row.id} ran out of its {timeout:g} s; the run waited on "
                "it, and continues from its checkpoint once it answers",
            ) from exc

    async def _timed_out(self, row: RunRow, timeout: float) -> str:
        """Out of time: the run fails, the text it streamed kept as its `output.partial`."""
        text = await partial.streamed_text(self.events.event_log, row)
        return await self._ended(
            await self.store.finish(
                row.id,
                RunState.FAILED,
                output=partial.partial_output(text),
                error=runstate.timed_out(timeout),
                attempt=row.attempt,
            )
        )

    async def _cancelled(self, row: RunRow) -> str:
        after = await self.store.get_run(row.id)
        if after is None:
            return "gone"
        if after.status == RunState.RUNNING.value:
            # A stop asked by the DB check without a recorded cancel cannot happen; be safe.
            after, _ = await self.store.cancel(row.id, "cancelled")
            assert after is not None
        # CancelRun recorded the end (and may have told of it): the text streamed until the
        # graph stopped goes on the run now, as its `output.partial`.
        output = partial.partial_output(await partial.streamed_text(self.events.event_log, row))
        if output is not None and after.output is None:
            after = await self.store.keep_partial(row.id, output) or after
        await self.events.terminal(after)
        return after.status

    async def _pause(self, row: RunRow, interrupt: dict[str, Any]) -> str:
        """Record the pause at `interrupt` ({"node", "value", "id"}) and tell of it."""
        after, changed = await self.store.pause(row.id, interrupt, row.attempt)
        if after is None:
            return "gone"
        if not changed:
            await self.events.terminal(after)
            return after.status
        await self.events.ask(after)
        return after.status


async def _stored(usage: UsageWriter) -> None:
    """Store what `usage` holds now, on a path where nothing else records it; a failure is
    the run's outage's, not news (the run goes on from its checkpoint)."""
    with contextlib.suppress(Exception):
        await usage.flush()


async def _drain(saver: BaseCheckpointSaver[Any]) -> Exception | None:
    """Wait until every checkpoint the graph gave `saver` is stored (a `RunSaver` writes them
    behind); the error of one that could not be."""
    if isinstance(saver, checkpoints.RunSaver):
        try:
            await saver.drain()
        except Exception as exc:  # noqa: BLE001 - the caller decides what it means
            return exc
    return None


def _pending_interrupt(snapshot: Any) -> dict[str, Any]:
    """The first interrupt a stored snapshot waits on, as `GraphEnd.interrupt`."""
    node, pending = "", snapshot.interrupts[0] if snapshot.interrupts else None
    for task in snapshot.tasks:
        if task.interrupts:
            node, pending = task.name, task.interrupts[0]
            break
    if pending is None:
        return _interrupt(node, None, None)
    return _interrupt(node, pending.value, pending.id)


def _interrupt(node: str, value: Any, interrupt_id: str | None) -> dict[str, Any]:
    """A pause as the run row and `run.interrupted` keep it: {"node", "value", "id"}."""
    return {"node": node, "value": _jsonable(value), "id": interrupt_id or ""}
