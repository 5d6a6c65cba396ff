"""CronService over gRPC: a cron's fields checked here (a bad schedule, zone, input, multitask
strategy or end time is INVALID_ARGUMENT naming the field; a missing agent, workflow or thread NOT_FOUND), state in
`crons_store`, firing in `crons_scheduler`. What a run of the cron executes is resolved and its
input checked by AgentService's own code, as CreateRun does."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from amelia.v1 import agents_pb2, crons_pb2, crons_pb2_grpc
from amelia_agents import convert, crons_schedule, multitask, pagination, webhooks, workflows
from amelia_agents.crons_scheduler import (
    Clock,
    StartRun,
    busy_reason,
    run_request,
    tell,
    utc_now,
)
from amelia_agents.crons_store import Action, CronRow, CronStore
from amelia_agents.servicer import AgentServicer
from amelia_common import paging
from amelia_common.errors import InvalidArgumentError, check_request_id
from amelia_common.eventlog import EventLog, timestamp_problem
from amelia_common.fieldmask import mask_paths
from amelia_common.names import BadNameError, uuid_name

Ctx = Any
UPDATABLE = (
    "paused",
    "schedule",
    "timezone",
    "input",
    "metadata",
    "end_time",
    "multitask_strategy",
    "webhook",
)
# Changing one of these computes the next run time afresh.
RESCHEDULING = {"paused", "schedule", "timezone", "end_time"}
COLUMNS = {"metadata": "meta"}  # a field whose column is named otherwise
OUTCOMES = {
    "FIRED": crons_pb2.CRON_OUTCOME_FIRED,
    "SKIPPED": crons_pb2.CRON_OUTCOME_SKIPPED,
    "FAILED": crons_pb2.CRON_OUTCOME_FAILED,
}


AGENT_FORM = "<id>' with id [a-z][a-z0-9-]*"  # (convert.agent_id's words)


def cron_id(name: str) -> uuid.UUID:
    return uuid_name(name, "crons")


def _time(target: timestamp_pb2.Timestamp, value: datetime | str | None) -> None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None:
        target.FromDatetime(value)


def _action(found: dict[str, Any], target: crons_pb2.CronAction) -> None:
    _time(target.schedule_time, found.get("schedule_time"))
    _time(target.action_time, found.get("action_time"))
    target.outcome = OUTCOMES.get(found.get("outcome", ""), crons_pb2.CRON_OUTCOME_UNSPECIFIED)
    target.run = found.get("run", "")
    target.reason = found.get("reason", "")
    target.missed_ticks = found.get("missed_ticks", 0)
    target.triggered = found.get("triggered", False)


def ended(row: CronRow, moment: datetime) -> bool:
    """No tick is left: the schedule reached its end (a paused cron once no tick comes before its
    end: pausing a cron whose last tick fired keeps it ended, as resuming it would)."""
    if row.paused:
        if row.end_time is None:
            return False
        schedule = crons_schedule.parse(row.schedule, row.timezone)
        return crons_schedule.first_tick(schedule, moment, row.end_time) is None
    return row.next_run_time is None and row.pending_tick is None


def cron_to_proto(row: CronRow, moment: datetime) -> crons_pb2.Cron:
    msg = crons_pb2.Cron(
        name=f"crons/{row.id}",
        thread=f"threads/{row.thread_id}" if row.thread_id else "",
        schedule=row.schedule,
        timezone=row.timezone,
        paused=row.paused,
        fired_count=row.fired_count,
        skipped_count=row.skipped_count,
        failed_count=row.failed_count,
        multitask_strategy=row.multitask_strategy,
        ended=ended(row, moment),
        webhook=row.webhook or "",
    )
    convert.set_target(msg, row.agent_id, row.workflow)
    msg.input.update(row.input or {})
    msg.metadata.SetInParent()  # `{}` when unset, as threads' and documents' metadata
    msg.metadata.update(row.meta or {})
    for name in ("end_time", "next_run_time", "create_time", "update_time"):
        _time(getattr(msg, name), getattr(row, name))
    if row.last_run:
        _action(row.last_run, msg.last_run)
    for found in row.recent or []:
        _action(found, msg.recent_actions.add())
    return msg


@dataclass(eq=False)
class CronServicer(crons_pb2_grpc.CronServiceServicer):
    crons: CronStore
    agents: AgentServicer
    start_run: StartRun
    event_log: EventLog
    clock: Clock = utc_now

    async def CreateCron(
        self, request: crons_pb2.CreateCronRequest, context: Ctx
    ) -> crons_pb2.CreateCronResponse:
        cron = request.cron
        # The thread first: POST /v1/threads/{thread}/crons names a thread that must exist.
        thread = await self.agents._known_thread(cron.thread) if cron.thread else None
        schedule = crons_schedule.parse(cron.schedule, cron.timezone)
        strategy = _threaded(_strategy(cron.multitask_strategy), thread)
        end_time = _end_time(cron)
        webhook = _webhook(cron.webhook)
        input_value = _json(cron.input, "cron.input", convert.MIB)
        meta = _json(cron.metadata, "cron.metadata", 64 * 1024)
        agent_id, workflow = await self._target(cron, input_value)
        moment = self.clock()
        _check_end(schedule, end_time, moment)
        row = CronRow(
            id=uuid.uuid4(),
            agent_id=agent_id,
            workflow=workflow,
            thread_id=thread,
            schedule=schedule.expression,
            timezone=cron.timezone,
            input=input_value,
            meta=meta,
            paused=cron.paused,
            multitask_strategy=strategy,
            webhook=webhook,
            end_time=end_time,
            next_run_time=None
            if cron.paused
            else crons_schedule.first_tick(schedule, moment, end_time),
            pending_missed=0,
            recent=[],
            fired_count=0,
            skipped_count=0,
            failed_count=0,
            create_time=moment,
            update_time=moment,
        )
        await self.crons.create(row)
        return crons_pb2.CreateCronResponse(cron=cron_to_proto(row, moment))

    async def _target(
        self, cron: crons_pb2.Cron, input_value: Any
    ) -> tuple[str | None, str | None]:
        """The cron's agent or workflow, checked as CreateRun checks a run's (NOT_FOUND when it
        is missing), with the input its runs will get."""
        run = agents_pb2.Run()
        which = cron.WhichOneof("target")
        if which is None:
            raise InvalidArgumentError("set cron.agent ('agents/<id>') or cron.workflow")
        setattr(run, which, getattr(cron, which))
        target = await self.agents._target(run)
        try:
            target.workflow.validate_input(
                input_value, self.agents.settings, agent=target.agent_id is not None
            )
        except workflows.InvalidInputError as exc:
            raise InvalidArgumentError(f"cron.input: {exc}") from None
        return target.agent_id, target.workflow_name

    async def _get(self, name: str) -> CronRow:
        cid = cron_id(name)
        return convert.found(await self.crons.get(cid), f"crons/{cid}")

    async def GetCron(
        self, request: crons_pb2.GetCronRequest, context: Ctx
    ) -> crons_pb2.GetCronResponse:
        row = await self._get(request.name)
        return crons_pb2.GetCronResponse(cron=cron_to_proto(row, self.clock()))

    async def ListCrons(
        self, request: crons_pb2.ListCronsRequest, context: Ctx
    ) -> crons_pb2.ListCronsResponse:
        limit, after, scope = pagination.keyset_page(request)
        if after is not None:
            try:
                uuid.UUID(after[1])
            except ValueError:
                raise InvalidArgumentError(paging.BAD_TOKEN) from None
        agent = (
            convert.agent_id(_whole(request.agent, "agents", AGENT_FORM)) if request.agent else None
        )
        thread = convert.thread_id(request.thread) if request.thread else None
        workflow = _workflow_filter(request.workflow) if request.workflow else None
        found = await self.crons.page(limit + 1, after, agent, thread, workflow)
        moment = self.clock()
        fit = convert.PageFit(lambda row: cron_to_proto(row, moment))
        _, token = pagination.page(found, limit, fit=fit, scope=scope)
        return crons_pb2.ListCronsResponse(crons=fit.messages, next_page_token=token)

    async def UpdateCron(
        self, request: crons_pb2.UpdateCronRequest, context: Ctx
    ) -> crons_pb2.UpdateCronResponse:
        cron = request.cron
        row = await self._get(cron.name)
        cid = row.id
        mask = [COLUMNS.get(name, name) for name in _mask(request.update_mask, cron)]
        values: dict[str, Any] = {
            "paused": cron.paused,
            "schedule": " ".join(cron.schedule.split()),
            "timezone": cron.timezone,
            "input": _json(cron.input, "cron.input", convert.MIB),
            "meta": _json(cron.metadata, "cron.metadata", 64 * 1024),
            "end_time": _end_time(cron),
            "multitask_strategy": _strategy(cron.multitask_strategy),
            "webhook": _webhook(cron.webhook),
        }
        moment = self.clock()
        if "multitask_strategy" in mask:
            _threaded(values["multitask_strategy"], row.thread_id)
        if "input" in mask:
            await self._target(_target_of(row), values["input"])

        def change(locked: CronRow) -> None:
            for name in mask:
                setattr(locked, name, values[name])
            schedule = crons_schedule.parse(locked.schedule, locked.timezone)  # as changed
            if "end_time" in mask:
                _check_end(schedule, locked.end_time, moment)
            if RESCHEDULING & set(mask):
                locked.next_run_time = (
                    None
                    if locked.paused
                    else crons_schedule.first_tick(schedule, moment, locked.end_time)
                )

        updated = await self.crons.update(cid, change)
        row = convert.found(updated, f"crons/{cid}")
        return crons_pb2.UpdateCronResponse(cron=cron_to_proto(row, moment))

    async def DeleteCron(
        self, request: crons_pb2.DeleteCronRequest, context: Ctx
    ) -> crons_pb2.DeleteCronResponse:
        cid = cron_id(request.name)
        if not await self.crons.delete(cid):
            raise convert.not_found(f"crons/{cid}")
        return crons_pb2.DeleteCronResponse()

    async def TriggerCron(
        self, request: crons_pb2.TriggerCronRequest, context: Ctx
    ) -> crons_pb2.TriggerCronResponse:
        row = await self._get(request.name)
        check_request_id(request.request_id)
        key = request.request_id or uuid.uuid4().hex
        if len(key) > 64 or not key.isascii():
            key = hashlib.sha256(key.encode()).hexdigest()[:32]
        moment = self.clock()
        run = await self.start_run(run_request(row, f"cron:{row.id}:trigger:{key}"))
        action = Action(
            moment,
            "FIRED",
            run=run.name,
            reason=await busy_reason(self.agents.store, run),
            triggered=True,
            action_time=moment,
        )
        recorded = await self.crons.record(row.id, action, pending=None)
        await tell(self.event_log, row.id, action)
        row = convert.found(recorded, f"crons/{row.id}")
        return crons_pb2.TriggerCronResponse(run=run, cron=cron_to_proto(row, moment))


def _whole(name: str, collection: str, form: str) -> str:
    """A list filter names its resource whole (`agents/x`, as the proto says): a bare or misspelt
    value is INVALID_ARGUMENT, not an empty page."""
    if not name.startswith(f"{collection}/"):
        raise BadNameError(f"{collection[:-1]} name {name!r} must be '{collection}/{form}")
    return name


def _workflow_filter(name: str) -> str:
    workflow = convert.workflow_name(_whole(name, "workflows", "<name>'"))
    if workflow not in workflows.names():
        raise InvalidArgumentError(
            f"workflow {name!r} is not a workflow; available: {', '.join(workflows.names())}"
        )
    return workflow


def _target_of(row: CronRow) -> crons_pb2.Cron:
    cron = crons_pb2.Cron()
    convert.set_target(cron, row.agent_id, row.workflow)
    return cron


def _json(message: Any, field: str, limit: int) -> Any:
    convert.check_size(message.ByteSize(), field, limit)
    return convert.json_from(message, field)


def _end_time(cron: crons_pb2.Cron) -> datetime | None:
    if not cron.HasField("end_time"):
        return None
    problem = timestamp_problem(cron.end_time, "cron.end_time")
    if problem is not None:
        raise InvalidArgumentError(problem)
    return cron.end_time.ToDatetime(tzinfo=UTC)


def _webhook(url: str) -> str | None:
    """The URL each run of the cron is POSTed to when it ends (checked as a run's), or None."""
    return webhooks.check_url(url, "cron.webhook") if url else None


def _strategy(value: str) -> str:
    """A cron's multitask strategy as stored (empty: reject), or INVALID_ARGUMENT naming the
    allowed values — the runs' own (`multitask.STRATEGIES`)."""
    try:
        return multitask.strategy(value)
    except InvalidArgumentError:
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise InvalidArgumentError(
            f"cron.multitask_strategy {shown!r} is not one of: {', '.join(multitask.STRATEGIES)} "
            "(what a tick does when the cron's thread still has a run)"
        ) from None


def _threaded(strategy: str, thread: uuid.UUID | None) -> str:
    """`strategy`, or INVALID_ARGUMENT when it is one a thread-less cron cannot use: each tick's
    run has a new thread, never busy (LangGraph Server's stateless crons have no strategy at
    all). reject, the default, is accepted: a client sends the form's or the API's default."""
    if thread is None and strategy != multitask.REJECT:
        raise InvalidArgumentError(
            f"cron.multitask_strategy {strategy!r} needs a cron on a thread: without cron.thread "
            "each tick runs on a new thread, which is never busy"
        )
    return strategy


def _check_end(
    schedule: crons_schedule.Schedule, end_time: datetime | None, moment: datetime
) -> None:
    """INVALID_ARGUMENT when `end_time` has passed, or comes before the schedule's next tick:
    no run would ever start (pausing or deleting the cron says that)."""
    if end_time is None:
        return
    if end_time <= moment:
        raise InvalidArgumentError(
            f"cron.end_time {_iso(end_time)} must be in the future (it is {_iso(moment)})"
        )
    tick = schedule.next_after(moment)
    if end_time <= tick:
        raise InvalidArgumentError(
            f"cron.end_time {_iso(end_time)} is not after the schedule's next tick "
            f"({_iso(tick)}): no run would start; to stop a cron, pause or delete it"
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _mask(paths: Any, cron: crons_pb2.Cron) -> list[str]:
    """An update mask's fields (`fieldmask.mask_paths`: comma-separated, snake_case or
    lowerCamelCase); the updatable fields `cron` sets when it is empty; INVALID_ARGUMENT naming
    unknown ones, or when nothing would change."""
    mask = mask_paths(paths, UPDATABLE)
    if not mask:
        present = {field.name for field, _ in cron.ListFields()}
        mask = [name for name in UPDATABLE if name in present]
    if not mask:
        raise InvalidArgumentError(
            f"nothing to update: name the fields in update_mask ({', '.join(UPDATABLE)})"
        )
    return mask
