"""AgentService over gRPC: validation and error codes here, state in `store`, work in workers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any, TypeAlias

import grpc
from langgraph.checkpoint.base import BaseCheckpointSaver
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.exc import IntegrityError

from amelia.v1 import agents_pb2, agents_pb2_grpc
from amelia_agents import (
    agent_fields,
    convert,
    filtering,
    multitask,
    pagination,
    queue,
    steps,
    thread_fields,
    threadcopy,
    threadstate,
    waiting,
    webhooks,
    workflows,
)
from amelia_agents.lifecycle import RunEvents
from amelia_agents.models import TERMINAL_STATES, AgentRow, RunRow, RunState
from amelia_agents.queue_status import run_queue
from amelia_agents.stateupdate import check_update
from amelia_agents.store import (
    THREAD_ORDERS,
    ActiveRunError,
    RunFilter,
    Store,
    ThreadSummary,
    now,
)
from amelia_agents.streaming import EarlyFollower, RunStreamer
from amelia_agents.worker import WorkerPool
from amelia_common import paging
from amelia_common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    check_request_id,
    check_text,
)
from amelia_common.eventlog import timestamp_problem
from amelia_common.logging import get_logger
from amelia_common.settings import Settings

# What to do about a thread's active run, said by the call refused: CreateRun and a cron
# have a multitask_strategy to set; RerunRun and ForkRun have none (a rerun may take a new
# thread, a fork is on its source's).
_CREATE_RUN_WAY = (
    "wait for it to end, or cancel it, or create the run with a multitask_strategy "
    "(enqueue, interrupt, rollback)"
)
_CRON_WAY = "cancel it, or set the cron's multitask_strategy (enqueue, interrupt, rollback)"
_REPEAT_WAY = "wait for it to end, or cancel it"
# A run's `request_origin` when CreateRun made it (RerunRun's and ForkRun's name their source).
CREATE_RUN = "CreateRun"


log = get_logger("amelia.agents.api")

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]
CANCEL_CONFIRM_SECONDS = 3.0
# CancelRun's `reason` becomes the run's `error` and rides in its cancel events: a note for a
# person, held to a size every event (NATS' 1 MiB) and every reader (gRPC's 4 MiB) can carry.
MAX_CANCEL_REASON = 1024
STEPS_PAGE_DEFAULT = 100
STEPS_PAGE_MAX = 1000


@dataclass(eq=False)
class AgentServicer(agents_pb2_grpc.AgentServiceServicer):
    settings: Settings
    store: Store
    events: RunEvents
    nc: NATS
    js: JetStreamContext
    checkpointer: BaseCheckpointSaver[Any]
    streamer: RunStreamer
    # This process's worker loops, if any: CreateRun starts a run on an idle one (`_record`).
    workers: WorkerPool | None = None

    # agents ---------------------------------------------------------------------------------

    async def CreateAgent(
        self, request: agents_pb2.CreateAgentRequest, context: Ctx
    ) -> agents_pb2.CreateAgentResponse:
        agent_id = request.agent_id or f"agent-{uuid.uuid4().hex[:12]}"
        if not convert.AGENT_ID.match(agent_id):
            raise InvalidArgumentError(f"agent_id {agent_id!r} must match [a-z][a-z0-9-]{{0,62}}")
        values = agent_fields.values(request.agent, agent_fields.NAMES, self.settings)
        values["display_name"] = values["display_name"] or agent_id
        stamp = now()
        row = AgentRow(id=agent_id, create_time=stamp, update_time=stamp, **values)
        try:
            await self.store.create_agent(row)
        except IntegrityError:
            raise AlreadyExistsError(f"agents/{agent_id} already exists") from None
        return agents_pb2.CreateAgentResponse(agent=convert.agent_to_proto(row))

    async def GetAgent(
        self, request: agents_pb2.GetAgentRequest, context: Ctx
    ) -> agents_pb2.GetAgentResponse:
        row = await self._get_agent(request.name)
        return agents_pb2.GetAgentResponse(agent=convert.agent_to_proto(row))

    async def _get_agent(self, name: str) -> AgentRow:
        agent_id = convert.agent_id(name)
        return convert.found(await self.store.get_agent(agent_id), f"agents/{agent_id}")

    async def ListAgents(
        self, request: agents_pb2.ListAgentsRequest, context: Ctx
    ) -> agents_pb2.ListAgentsResponse:
        limit, after, scope = pagination.keyset_page(request)
        fit = convert.PageFit(convert.agent_to_proto)
        found = await self.store.list_agents(limit + 1, after)
        _, token = pagination.page(found, limit, fit=fit, scope=scope)
        return agents_pb2.ListAgentsResponse(agents=fit.messages, next_page_token=token)

    async def UpdateAgent(
        self, request: agents_pb2.UpdateAgentRequest, context: Ctx
    ) -> agents_pb2.UpdateAgentResponse:
        agent_id = convert.agent_id(request.agent.name)
        mask = agent_fields.mask_fields(request.update_mask, request.agent)
        values = agent_fields.values(request.agent, mask, self.settings)
        row = convert.found(await self.store.update_agent(agent_id, values), f"agents/{agent_id}")
        return agents_pb2.UpdateAgentResponse(agent=convert.agent_to_proto(row))

    async def DeleteAgent(
        self, request: agents_pb2.DeleteAgentRequest, context: Ctx
    ) -> agents_pb2.DeleteAgentResponse:
        agent_id = convert.agent_id(request.name)
        if not await self.store.delete_agent(agent_id):
            raise convert.not_found(f"agents/{agent_id}")
        return agents_pb2.DeleteAgentResponse()

    # threads --------------------------------------------------------------------------------

    async def CreateThread(
        self, request: agents_pb2.CreateThreadRequest, context: Ctx
    ) -> agents_pb2.CreateThreadResponse:
        meta = convert.json_from(request.thread.metadata, "thread.metadata")
        tid = thread_fields.chosen_id(request)
        when_there = thread_fields.if_exists(request.if_exists)
        row, made = await self.store.create_thread(meta, tid)
        if made:
            return agents_pb2.CreateThreadResponse(thread=convert.thread_to_proto(row))
        if when_there == thread_fields.RAISE:
            raise AlreadyExistsError(
                f'threads/{row.id} already exists; if_exists "do_nothing" returns it as it is'
            )
        found = convert.found(await self.store.thread_summary(row.id), f"threads/{row.id}")
        return agents_pb2.CreateThreadResponse(thread=_thread(found))

    async def GetThread(
        self, request: agents_pb2.GetThreadRequest, context: Ctx
    ) -> agents_pb2.GetThreadResponse:
        tid = convert.thread_id(request.name)
        found = convert.found(await self.store.thread_summary(tid), f"threads/{tid}")
        return agents_pb2.GetThreadResponse(thread=_thread(found))

    async def ListThreads(
        self, request: agents_pb2.ListThreadsRequest, context: Ctx
    ) -> agents_pb2.ListThreadsResponse:
        limit, after, scope = pagination.keyset_page(request)
        order_by = " ".join(request.order_by.split()) or "create_time"
        if order_by not in THREAD_ORDERS:
            raise InvalidArgumentError(f"order_by must be one of: {', '.join(THREAD_ORDERS)}")
        where = threadstate.metadata_condition(request.metadata_filter)
        status = convert.thread_status(request.status)
        found = await self.store.list_threads(limit + 1, after, order_by, where, status)
        fit = convert.PageFit(_thread)
        key = order_by.split()[0]
        _, token = pagination.page(found, limit, key=key, fit=fit, scope=scope)
        return agents_pb2.ListThreadsResponse(threads=fit.messages, next_page_token=token)

    async def CountThreads(
        self, request: agents_pb2.CountThreadsRequest, context: Ctx
    ) -> agents_pb2.CountThreadsResponse:
        where = threadstate.metadata_condition(request.metadata_filter)
        status = convert.thread_status(request.status)
        return agents_pb2.CountThreadsResponse(count=await self.store.count_threads(where, status))

    async def UpdateThread(
        self, request: agents_pb2.UpdateThreadRequest, context: Ctx
    ) -> agents_pb2.UpdateThreadResponse:
        tid = convert.thread_id(request.thread.name)
        thread_fields.update_mask(request.update_mask)
        patch = convert.json_from(request.thread.metadata, "thread.metadata")
        changed = await self.store.update_thread(tid, lambda old: thread_fields.merged(old, patch))
        convert.found(changed, f"threads/{tid}")
        found = convert.found(await self.store.thread_summary(tid), f"threads/{tid}")
        return agents_pb2.UpdateThreadResponse(thread=_thread(found))

    async def CopyThread(
        self, request: agents_pb2.CopyThreadRequest, context: Ctx
    ) -> agents_pb2.CopyThreadResponse:
        tid = convert.thread_id(request.name)
        row = convert.found(await threadcopy.copy_thread(self.store, tid), f"threads/{tid}")
        return agents_pb2.CopyThreadResponse(thread=convert.thread_to_proto(row))

    async def DeleteThread(
        self, request: agents_pb2.DeleteThreadRequest, context: Ctx
    ) -> agents_pb2.DeleteThreadResponse:
        tid = await self._known_thread(request.name)
        active = await threadstate.active_runs(self.store, tid)
        if active:
            them = "it" if len(active) == 1 else "them"
            raise FailedPreconditionError(
                f"threads/{tid} has {threadstate.named(active)}: cancel {them} first"
            )
        await self.checkpointer.adelete_thread(str(tid))
        await self.store.delete_thread(tid)
        return agents_pb2.DeleteThreadResponse()

    # a thread's state (LangGraph's get_state, get_state_history, update_state): threadstate

    def _states(self) -> threadstate.ThreadStates:
        return threadstate.ThreadStates(self.store, self.checkpointer)

    async def GetThreadState(
        self, request: agents_pb2.GetThreadStateRequest, context: Ctx
    ) -> agents_pb2.GetThreadStateResponse:
        state = await self._states().get(request.thread, request.checkpoint)
        return agents_pb2.GetThreadStateResponse(state=state)

    async def ListThreadHistory(
        self, request: agents_pb2.ListThreadHistoryRequest, context: Ctx
    ) -> agents_pb2.ListThreadHistoryResponse:
        states, token = await self._states().history(request)
        return agents_pb2.ListThreadHistoryResponse(states=states, next_page_token=token)

    async def UpdateThreadState(
        self, request: agents_pb2.UpdateThreadStateRequest, context: Ctx
    ) -> agents_pb2.UpdateThreadStateResponse:
        state = await self._states().update(request)
        return agents_pb2.UpdateThreadStateResponse(state=state)

    # workflows ------------------------------------------------------------------------------

    async def ListWorkflows(
        self, request: agents_pb2.ListWorkflowsRequest, context: Ctx
    ) -> agents_pb2.ListWorkflowsResponse:
        response = agents_pb2.ListWorkflowsResponse()
        for wf in workflows.listed():
            msg = response.workflows.add(
                name=f"workflows/{wf.name}",
                description=wf.description,
                nodes=wf.nodes,
                edges=steps.edges(wf),
            )
            msg.input_schema.update(wf.input_schema)
        return response

    # runs -----------------------------------------------------------------------------------

    async def _requeue(self, row: RunRow, key: str) -> None:
        """Queue a job for a run already recorded. If NATS does not take it, the run stays
        QUEUED and the reconciler (`sweeper`) queues it once NATS is back: nothing is lost."""
        try:
            await queue.enqueue(self.js, self.settings, row.id, key, row.thread_id)
        except UnavailableError as exc:
            log.warning(
                "run recorded but not queued yet; the reconciler will queue it",
                run=str(row.id),
                error=exc.message,
            )

    async def CreateRun(
        self, request: agents_pb2.CreateRunRequest, context: Ctx, *, by_cron: bool = False
    ) -> agents_pb2.CreateRunResponse:
        """`by_cron`: a cron's run, whose busy-thread refusal names the cron's strategy field."""
        started, _ = await self._create(request, by_cron=by_cron)
        return agents_pb2.CreateRunResponse(run=started)

    async def CreateAndStreamRun(
        self, request: agents_pb2.CreateAndStreamRunRequest, context: Ctx
    ) -> AsyncIterator[agents_pb2.CreateAndStreamRunResponse]:
        """CreateRun, then StreamRun of its run. The call follows the run from before it is
        recorded, so StreamRun's catch-up read of what the log already holds is not needed."""
        create = agents_pb2.CreateRunRequest(run=request.run, request_id=request.request_id)
        early = EarlyFollower(self.streamer)
        try:
            started, row = await self._create(create, before_start=early.join)
            follower = early.of(started.name)
            if row is None or follower is None:  # a request_id's earlier run; the feed closed
                row = await self._get_run(started.name)
            yield agents_pb2.CreateAndStreamRunResponse(run=started)
            follow = agents_pb2.StreamRunRequest(
                name=started.name, max_events_per_message=request.max_events_per_message
            )
            responses = self.streamer.responses(
                row, follow, agents_pb2.CreateAndStreamRunResponse, follower
            )
            async for response in responses:
                yield response
        finally:
            early.leave()

    async def _create(
        self,
        request: agents_pb2.CreateRunRequest,
        *,
        by_cron: bool = False,
        before_start: Callable[[RunRow], Awaitable[None]] | None = None,
    ) -> tuple[agents_pb2.Run, RunRow | None]:
        """Resolve the target → validate the input → the thread → the row → record and queue:
        the run as recorded, and the row recorded (None when the request_id's earlier run is
        given). `before_start` is awaited with the new row before it is recorded."""
        run = request.run
        existing = await self._existing(request.request_id)
        # No input on a thread: continue it from its latest checkpoint (LangGraph's
        # `invoke(None, config)`), recorded as input None. `input: {}` is a fresh start.
        continuing = bool(run.thread) and not run.HasField("input")
        input_value = None if continuing else convert.json_from(run.input, "run.input")

        def same(existing: RunRow) -> None:
            _check_same_run(existing, run, input_value, request.request_id)

        if existing is not None:
            same(existing)
            return convert.run_to_proto(existing), None
        target = await self._target(run)
        if input_value is not None:
            try:
                target.workflow.validate_input(
                    input_value, self.settings, agent=target.agent_id is not None
                )
            except workflows.InvalidInputError as exc:
                raise InvalidArgumentError(str(exc)) from None
        timeout = _run_timeout(run)
        chosen = multitask.strategy(run.multitask_strategy)
        tid, new_thread = await self._thread_for(run.thread)
        if input_value is None:
            await self._states().check_continuable(tid, target.agent_id, target.workflow_name)
        row = _new_run(
            self.settings,
            agent_id=target.agent_id,
            workflow=target.workflow_name,
            thread_id=tid,
            input_value=input_value,
            agent_config=target.agent_config,
            timeout=timeout,
            request_id=request.request_id,
        )
        if run.multitask_strategy:
            row.multitask_strategy = chosen
        if request.request_id:
            row.request_origin = CREATE_RUN
        webhooks.attach(row, run.webhook)
        way = _CRON_WAY if by_cron else _CREATE_RUN_WAY
        if before_start is not None:
            await before_start(row)
        started = await self._start(row, new_thread, chosen=chosen, busy_way=way, same=same)
        return started, row

    async def _target(self, run: agents_pb2.Run) -> _Target:
        """What `run` executes: an agent (a snapshot of its configuration, so later edits do not
        change the run) or a listed workflow; NOT_FOUND naming what is missing."""
        which = run.WhichOneof("target")
        if which is None:
            raise InvalidArgumentError("set run.agent ('agents/<id>') or run.workflow")
        if which == "agent":
            agent = await self._get_agent(run.agent)
            graph = workflows.get(workflows.AGENT_WORKFLOW)
            assert graph is not None, "the agent graph registers on import of workflows"
            return _Target(graph, agent_id=agent.id, agent_config=convert.agent_snapshot(agent))
        name = convert.workflow_name(run.workflow)
        workflow = workflows.get(name)
        if workflow is None or workflow.hidden:
            raise NotFoundError(
                f"workflows/{name} does not exist; available: {', '.join(workflows.names())}"
            )
        return _Target(workflow, workflow_name=name)

    async def _thread_for(self, name: str) -> tuple[uuid.UUID, bool]:
        """The thread a new run goes on, and whether it is new: a fresh one when `name` is
        empty, else the existing `threads/<uuid>` (NOT_FOUND if it is not there)."""
        if not name:
            return uuid.uuid4(), True
        return await self._known_thread(name), False

    async def _known_thread(self, name: str) -> uuid.UUID:
        """The id of the existing thread `name`; NOT_FOUND if it is not there."""
        tid = convert.thread_id(name)
        convert.found(await self.store.get_thread(tid), f"threads/{tid}")
        return tid

    async def _existing(self, request_id: str) -> RunRow | None:
        """The run an earlier request with `request_id` made (re-queued if it never started)."""
        check_request_id(request_id)
        if not request_id:
            return None
        existing = await self.store.run_by_request_id(request_id)
        queued = existing is not None and existing.status == RunState.QUEUED.value
        # (A run waiting behind its thread's run gets its job when admitted, not before.)
        if (
            queued
            and existing is not None
            and not existing.has_resume
            and not existing.queued_behind
        ):
            await self._requeue(existing, "start")
        return existing

    async def _start(
        self,
        row: RunRow,
        new_thread: bool,
        then: Callable[[], Awaitable[None]] | None = None,
        chosen: str = multitask.REJECT,
        busy_way: str = _REPEAT_WAY,
        same: Callable[[RunRow], None] | None = None,
    ) -> agents_pb2.Run:
        """Record `row` and queue its job in one transaction; `then` runs once the job is
        queued, before the commit (if it raises, nothing is recorded, and the worker drops the
        job of a run that never appears). On a busy thread, `chosen` (`multitask`) says what
        happens: FAILED_PRECONDITION saying `busy_way`, or the run waits behind the thread's
        run. A twin request that recorded its run with the same request_id first gives that
        run, once `same` (ALREADY_EXISTS unless it is the same request) lets it."""

        async def queue_it() -> None:
            await queue.enqueue(self.js, self.settings, row.id, "start", row.thread_id)
            if then is not None:
                await then()

        try:
            # The job is queued inside the transaction: if NATS refuses it, nothing is recorded.
            # With a multitask strategy, on a thread that ever started a run, the run waits
            # behind the thread's run and is admitted once that run's worker is done with it.
            while True:
                if chosen != multitask.REJECT and not new_thread:
                    behind = await self.store.create_behind(
                        row, multitask.stop_reason(chosen, row.id), chosen == multitask.ROLLBACK
                    )
                    if behind is not None:
                        await self._waiting(row, chosen, *behind)
                        break
                try:
                    await self._record(row, new_thread, queue_it)
                    break
                except ActiveRunError:
                    if chosen == multitask.REJECT:
                        raise
        except ActiveRunError:
            active = await threadstate.active_runs(self.store, row.thread_id)
            raise FailedPreconditionError(
                f"threads/{row.thread_id} already has {threadstate.named(active[:1])}; a thread "
                f"runs one at a time: {busy_way}"
            ) from None
        except IntegrityError:
            existing = await self.store.run_by_request_id(row.request_id or "")
            if existing is None:
                raise
            if same is not None:
                same(existing)
            return convert.run_to_proto(existing)
        except UnavailableError as exc:  # from the queue only: PostgreSQL's errors pass untouched
            log.warning("cannot queue run", run=str(row.id), error=exc.message)
            cause = exc.__cause__
            raise UnavailableError(
                exc.dependency,
                f"the run queue did not take the run ({cause or type(cause).__name__}); "
                "nothing was started",
            ) from exc
        return convert.run_to_proto(row)

    async def _record(
        self, row: RunRow, new_thread: bool, queue_it: Callable[[], Awaitable[None]]
    ) -> None:
        """`create_run`: recorded claimed and started right after its commit by this process
        (eager start, `worker.Eager`) when one of its worker loops is idle."""
        workers = self.workers
        eager = await workers.eager(row.id, row.thread_id) if workers is not None else None
        if workers is None or eager is None:
            await self.store.create_run(row, new_thread, before_commit=queue_it)
            return
        try:
            recorded = await self.store.create_run(
                row, new_thread, before_commit=queue_it, claimed=eager.claim
            )
        except BaseException:
            await workers.abandon(eager)
            raise
        workers.start_eager(eager, recorded)

    async def _waiting(
        self, row: RunRow, chosen: str, stopped: list[RunRow], behind_active: bool
    ) -> None:
        """After `row` was recorded waiting behind its thread's run: tell what it waits for
        (if that run is active), stop the runs its strategy cancelled (those that never started
        first: a rollback deletes them with the one that ran), and admit it if the run it
        waits for has ended (its end may have looked for waiting runs before this commit)."""
        if behind_active and row.queued_behind is not None:
            try:
                await self.events.publish(
                    self.events.event(
                        row,
                        "run.queued",
                        {"behind": convert.run_name(row.queued_behind), "strategy": chosen},
                        event_id=f"{row.id}:queued",
                    )
                )
            except Exception as exc:  # noqa: BLE001 - it is recorded: its start tells the rest
                log.warning(
                    "run.queued not published", run=str(row.id), error=str(exc) or repr(exc)
                )
        for run in sorted(stopped, key=lambda r: r.start_time is not None):
            await self._tell_cancelled(run)
        await multitask.settle_quietly(self.store, self.js, self.settings, row.thread_id)

    async def _tell_cancelled(self, row: RunRow) -> RunRow:
        """After `row` was recorded CANCELLED: the worker running it (if any) stops it and
        publishes the end; else we do. The run as it is then (`row` if it is gone: a rollback
        deleted it)."""
        confirmed = await queue.request_cancel(self.nc, row.id, row.error, CANCEL_CONFIRM_SECONDS)
        row = await self.store.get_run(row.id) or row
        if not confirmed or row.terminal_sequence is None:
            await self.events.terminal(row)
            row = await self.store.get_run(row.id) or row
        return row

    async def _get_run(self, name: str) -> RunRow:
        rid = convert.run_id(name)
        return convert.found(await self.store.get_run(rid), convert.run_name(rid))

    async def GetRun(
        self, request: agents_pb2.GetRunRequest, context: Ctx
    ) -> agents_pb2.GetRunResponse:
        rid = convert.run_id(request.name)
        found, stopping = await multitask.run_and_stopping(self.store, rid)
        run = convert.run_to_proto(convert.found(found, convert.run_name(rid)))
        if stopping is not None:
            # Its thread's previous run ended but its worker is still stopping it (`locks`).
            run.queued_behind = convert.run_name(stopping)
        return agents_pb2.GetRunResponse(run=run)

    async def DeleteRun(
        self, request: agents_pb2.DeleteRunRequest, context: Ctx
    ) -> agents_pb2.DeleteRunResponse:
        """As LangGraph Server: the run's row goes; its thread's checkpoints stay (they are the
        thread's state, which later runs continue from), and so do its events (the log is
        append-only). A rolled back run's checkpoints go with it, as its rollback would have
        done. A webhook still owed is delivered (migration agents_0008's trigger)."""
        rid = convert.run_id(request.name)
        name = convert.run_name(rid)
        row = convert.found(await self.store.get_run(rid), name)
        _check_ended(row)
        # A CANCELLED run's worker may still be stopping its graph: wait a moment for it.
        async with multitask.ended_run_lock(self.store, rid) as free:
            if not free:
                raise FailedPreconditionError(
                    f"{name} is {row.status} but its worker is still stopping it: retry in a moment"
                )
            if row.rolled_back:
                await multitask.delete_checkpoints(self.store, row.thread_id, [rid])
            left = await self.store.delete_ended_run(rid)
        if left is not None:
            _check_ended(left)  # resumed or re-queued meanwhile: say so
        return agents_pb2.DeleteRunResponse()

    async def ListRuns(
        self, request: agents_pb2.ListRunsRequest, context: Ctx
    ) -> agents_pb2.ListRunsResponse:
        limit, after, scope = pagination.keyset_page(request)
        flt = RunFilter()
        try:
            flt.statuses = [convert.STATUS_FROM_PROTO[s] for s in request.statuses]
        except KeyError:
            raise InvalidArgumentError("statuses has an unknown or unspecified status") from None
        if request.agent:
            flt.agent_id = convert.agent_id(request.agent)
        if request.workflow:
            flt.workflow = convert.workflow_name(request.workflow)
        if request.thread:
            flt.thread_id = convert.thread_id(request.thread)
        for name in ("created_after", "created_before"):
            if request.HasField(name):
                stamp = getattr(request, name)
                problem = timestamp_problem(stamp, name)
                if problem is not None:
                    raise InvalidArgumentError(problem)
                setattr(flt, name, stamp.ToDatetime(tzinfo=UTC))
        flt.condition = filtering.compile_filter(request.filter)
        order = pagination.run_order(request.order_by)
        fit = convert.PageFit(convert.run_to_proto)
        sessions = self.store.sessions
        _, token = await pagination.list_runs(sessions, limit, after, flt, order, fit, scope)
        return agents_pb2.ListRunsResponse(runs=fit.messages, next_page_token=token)

    async def CancelRun(
        self, request: agents_pb2.CancelRunRequest, context: Ctx
    ) -> agents_pb2.CancelRunResponse:
        rid = convert.run_id(request.name)
        check_text(request.reason, "reason", MAX_CANCEL_REASON)
        reason = request.reason.strip() or "cancelled"
        found, changed = await self.store.cancel(rid, reason)
        row = convert.found(found, convert.run_name(rid))
        if not changed:
            raise FailedPreconditionError(
                f"runs/{rid} already ended ({row.status}); nothing to cancel"
            )
        row = await self._tell_cancelled(row)
        return agents_pb2.CancelRunResponse(run=convert.run_to_proto(row))

    async def ResumeRun(
        self, request: agents_pb2.ResumeRunRequest, context: Ctx
    ) -> agents_pb2.ResumeRunResponse:
        rid = convert.run_id(request.name)
        if not request.HasField("answer"):
            raise InvalidArgumentError("answer is required (any JSON value)")
        answer = convert.json_from(request.answer, "answer")
        request_id = request.request_id
        check_request_id(request_id)
        if request_id:  # a retry after the answer was taken (the run may be paused again)
            row = convert.found(await self.store.get_run(rid), convert.run_name(rid))
            if _resumed_by(row, request_id):
                return _resumed_again(row, answer, request_id)
        found, changed = await self.store.resume(
            rid, answer, self.settings.RUNS_QUEUE_STREAM, request_id
        )
        row = convert.found(found, convert.run_name(rid))
        if not changed:
            if _resumed_by(row, request_id):  # a concurrent twin won
                return _resumed_again(row, answer, request_id)
            # The question stays on the run until it pauses again or ends: an answer that lost
            # a race to another one is told so, not just the run's state.
            answered = row.has_resume or (
                row.interrupt is not None and row.status != RunState.PAUSED.value
            )
            raise FailedPreconditionError(
                f"runs/{rid} was already answered (it is {row.status}); this answer was not used"
                if answered
                else f"runs/{rid} is {row.status}, not PAUSED; there is nothing to answer (an "
                "answer sent with a request_id can be retried with it: the retry gets the run back)"
            )
        await self._requeue(row, f"resume-{row.attempt}")
        return agents_pb2.ResumeRunResponse(run=convert.run_to_proto(row))

    async def ListRunSteps(
        self, request: agents_pb2.ListRunStepsRequest, context: Ctx
    ) -> agents_pb2.ListRunStepsResponse:
        row = await self._get_run(request.parent)
        limit = paging.page_size(request.page_size, STEPS_PAGE_DEFAULT, STEPS_PAGE_MAX)
        scope = paging.request_scope(request)
        offset = pagination.offset_of(request.page_token, scope)
        cancelled = row.error if row.status == RunState.CANCELLED.value else None
        found = steps.to_steps(await steps.history(row, self.checkpointer), cancelled, str(row.id))
        page, token = pagination.offset_page(found, offset, limit, scope)
        return agents_pb2.ListRunStepsResponse(steps=page, next_page_token=token)

    async def RerunRun(
        self, request: agents_pb2.RerunRunRequest, context: Ctx
    ) -> agents_pb2.RerunRunResponse:
        source = await self._get_run(request.name)
        origin = f"RerunRun of runs/{source.id}"
        if request.thread:
            origin += f" on threads/{convert.thread_id(request.thread)}"

        def same(existing: RunRow) -> None:
            _check_same_origin(existing, origin, request.request_id)

        existing = await self._existing(request.request_id)
        if existing is not None:
            same(existing)
            return agents_pb2.RerunRunResponse(run=convert.run_to_proto(existing))
        tid, new_thread = await self._thread_for(request.thread)
        if source.input is None:  # it continued its thread: so does its rerun
            if new_thread:
                raise InvalidArgumentError(
                    f"runs/{source.id} had no input (it continued its thread), so a new thread "
                    "gives its rerun nothing to continue: name the thread to continue (thread)"
                )
            await self._states().check_continuable(tid, source.agent_id, source.workflow)
        row = _repeat(self.settings, source, tid, request.request_id)
        row.request_origin = origin if request.request_id else None
        webhooks.attach(row, request.webhook, "webhook")  # its own: the source's is not kept
        return agents_pb2.RerunRunResponse(run=await self._start(row, new_thread, same=same))

    async def ForkRun(
        self, request: agents_pb2.ForkRunRequest, context: Ctx
    ) -> agents_pb2.ForkRunResponse:
        source = await self._get_run(request.name)
        values = convert.json_from(request.values, "values")
        if not request.checkpoint:
            raise InvalidArgumentError(
                "checkpoint is required: a step's checkpoint from ListRunSteps"
            )
        origin = (
            f"ForkRun of runs/{source.id} at {request.checkpoint[:80]} with values "
            f"sha256:{threadstate.update_digest(values, '', request.checkpoint)[:16]}"
        )

        def same(existing: RunRow) -> None:
            _check_same_origin(existing, origin, request.request_id)

        existing = await self._existing(request.request_id)
        if existing is not None:
            same(existing)
            return agents_pb2.ForkRunResponse(run=convert.run_to_proto(existing))
        steps.checkpoint_id(request.checkpoint, "checkpoint", "ListRunSteps")
        if source.status not in {s.value for s in TERMINAL_STATES}:
            raise FailedPreconditionError(
                f"runs/{source.id} is {source.status}: fork a run once it has ended"
            )
        point = await steps.fork_point(source, self.checkpointer, request.checkpoint)
        # Checked before anything is queued; `write_fork` writes them the same way.
        graph = steps.compiled(source, self.checkpointer)
        check_update(graph, values, point.before)
        row = _repeat(self.settings, source, source.thread_id, request.request_id)
        row.request_origin = origin if request.request_id else None
        webhooks.attach(row, request.webhook, "webhook")  # its own: the source's is not kept

        async def fork() -> None:
            # Inside the run's transaction, after the one-active-run-per-thread check and the
            # queueing: a fork is written only for a run that is recorded and queued (a worker
            # sees the run, so reads the thread, only after the commit).
            await steps.write_fork(row, source, point, values, graph)

        started = await self._start(row, False, then=fork, same=same)
        return agents_pb2.ForkRunResponse(run=started)

    async def GetRunQueue(
        self, request: agents_pb2.GetRunQueueRequest, context: Ctx
    ) -> agents_pb2.GetRunQueueResponse:
        return await run_queue(self.settings, self.js, self.store.sessions)

    async def StreamRun(
        self, request: agents_pb2.StreamRunRequest, context: Ctx
    ) -> AsyncIterator[agents_pb2.StreamRunResponse]:
        row = await self._get_run(request.name)
        async for response in self.streamer.responses(row, request, agents_pb2.StreamRunResponse):
            yield response

    async def WaitRun(
        self, request: agents_pb2.WaitRunRequest, context: Ctx
    ) -> agents_pb2.WaitRunResponse:
        wait = waiting.wait_time(request, context.time_remaining())
        row = await self.streamer.waits.wait(request.name, wait.seconds, wait.already)
        return agents_pb2.WaitRunResponse(run=convert.run_to_proto(row))


@dataclass(frozen=True)
class _Target:
    """What a new run executes: a workflow, or the agent graph with an agent's snapshot."""

    workflow: workflows.Workflow
    agent_id: str | None = None
    workflow_name: str | None = None
    agent_config: dict[str, Any] | None = None


def _run_timeout(run: agents_pb2.Run) -> float | None:
    """The run's own timeout in seconds, or None for its workflow's (or agent's) default."""
    if not run.HasField("timeout"):
        return None
    timeout = convert.duration_seconds(run.timeout, "run.timeout")
    if timeout <= 0:
        raise InvalidArgumentError("run.timeout must be positive")
    return timeout


def _new_run(
    settings: Settings,
    *,
    agent_id: str | None,
    workflow: str | None,
    thread_id: uuid.UUID,
    input_value: dict[str, Any] | None,
    agent_config: dict[str, Any] | None,
    timeout: float | None,
    request_id: str,
) -> RunRow:
    """A QUEUED run, not yet recorded (input None: it continues its thread)."""
    return RunRow(
        id=uuid.uuid4(),
        agent_id=agent_id,
        workflow=workflow,
        thread_id=thread_id,
        input=input_value,
        agent_config=agent_config,
        status=RunState.QUEUED.value,
        error="",
        create_time=now(),
        input_tokens=0,
        output_tokens=0,
        has_resume=False,
        attempt=0,
        timeout_seconds=timeout,
        request_id=request_id or None,
        worker="",
        queue=settings.RUNS_QUEUE_STREAM,
        queued_time=now(),
        pickups=0,
        rolled_back=False,
    )


def _resumed_by(row: RunRow, request_id: str) -> bool:
    """Whether the run's last answer came with `request_id` (a non-empty one)."""
    return bool(request_id) and (row.resume_request or {}).get("request_id") == request_id


def _resumed_again(row: RunRow, answer: Any, request_id: str) -> agents_pb2.ResumeRunResponse:
    """The answer to a ResumeRun retried with the `request_id` that already answered the run:
    the run as it is now, or ALREADY_EXISTS if the retry carries another answer."""
    if (row.resume_request or {}).get("answer") != answer:
        raise AlreadyExistsError(
            f"request_id {request_id!r} already answered runs/{row.id} with another answer; a "
            "retry must repeat the same answer, a new answer needs a new request_id"
        )
    return agents_pb2.ResumeRunResponse(run=convert.run_to_proto(row))


def _check_ended(row: RunRow) -> None:
    """FAILED_PRECONDITION naming the run's status unless it has ended (DeleteRun)."""
    if row.status not in {state.value for state in TERMINAL_STATES}:
        raise FailedPreconditionError(
            f"runs/{row.id} is {row.status}: only an ended run (COMPLETED, FAILED or CANCELLED) "
            "can be deleted; cancel it first (CancelRun)"
        )


def _already_made(existing: RunRow, rid: str, what: str) -> AlreadyExistsError:
    return AlreadyExistsError(
        f"request_id {rid!r} already made runs/{existing.id} {what}; a retry must repeat the "
        "same request, a new run needs a new request_id"
    )


def _check_same_origin(existing: RunRow, origin: str, rid: str) -> None:
    """ALREADY_EXISTS unless `rid`'s run was made by this same RerunRun or ForkRun (`origin`):
    an id of a CreateRun, of another source's rerun or of a fork with other values is another
    request (QA s20: they were handed back as if retried)."""
    if existing.request_origin != origin:
        made = existing.request_origin or "by an earlier request"
        raise _already_made(existing, rid, made if made.startswith("by ") else f"by {made}")


def _check_same_run(existing: RunRow, run: agents_pb2.Run, input_value: Any, rid: str) -> None:
    """ALREADY_EXISTS when `rid` made a run of something else: a retried CreateRun must be the
    same request (as with Stripe's idempotency keys), or a client's bug would silently get an
    unrelated run back."""
    if existing.request_origin not in (None, CREATE_RUN):
        raise _already_made(existing, rid, f"by {existing.request_origin}")
    differs = []
    if run.WhichOneof("target") == "agent":
        if existing.agent_id != convert.agent_id(run.agent):
            differs.append("agent")
    elif existing.agent_id is not None or existing.workflow != convert.workflow_name(run.workflow):
        differs.append("workflow")
    if run.thread and convert.thread_id(run.thread) != existing.thread_id:
        differs.append("thread")
    if input_value != existing.input:
        differs.append("input")
    if differs:
        raise _already_made(existing, rid, f"with a different {' and '.join(differs)}")


def _repeat(settings: Settings, source: RunRow, thread_id: uuid.UUID, request_id: str) -> RunRow:
    """A QUEUED run, not yet recorded, of what `source` ran: its agent or workflow, input,
    agent configuration and timeout (a rerun, or a fork)."""
    return _new_run(
        settings,
        agent_id=source.agent_id,
        workflow=source.workflow,
        thread_id=thread_id,
        input_value=source.input,
        agent_config=source.agent_config,
        timeout=source.timeout_seconds,
        request_id=request_id,
    )


def _thread(found: ThreadSummary) -> agents_pb2.Thread:
    return convert.thread_to_proto(
        found.row, found.run_count, found.preview, found.status, found.latest_run
    )


__all__ = ["TERMINAL_STATES", "AgentServicer"]
