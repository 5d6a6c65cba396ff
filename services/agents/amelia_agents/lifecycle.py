"""Publishing a run's events: the lifecycle (`agent.*` / `workflow.*`, `run.*`) and its end.

Every event of a run has the subject `runs/<uuid>` and carries `run` and `attempt` in its data
(a worker that died mid-node leaves that node's tokens behind; the next attempt's tokens say a
higher `attempt`). Which events tell of which transition, and in what order they go with the stored status,
is `runstate`'s; this module builds and publishes them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from amelia.v1 import events_pb2
from amelia_agents import multitask
from amelia_agents.convert import run_name
from amelia_agents.models import RunRow
from amelia_agents.runstate import end_events, lifecycle_prefix
from amelia_agents.store import Store
from amelia_common import telemetry
from amelia_common.errors import InvalidArgumentError, check_json
from amelia_common.eventlog import (
    EventLog,
    InvalidEventError,
    PublishPipeline,
    StartAt,
    event_data,
    fit_data,
    make_event,
)

TERMINAL_TYPES = ("run.completed", "run.failed", "run.cancelled")
# A piece of a model's reply (`runtime.chat` emits one per streamed chunk).
TOKEN_TYPE = "run.token"
# A LangGraph task's start and end (`run.node.started` / `run.node.finished`).
NODE_TYPES = "run.node.*"
# A run's events are stored after it was created; a margin for the two clocks (PostgreSQL's,
# NATS's) when its log is read from its creation on.
CLOCK_MARGIN = dt.timedelta(seconds=60)


def question_id(row: RunRow) -> str:
    """The id of a PAUSED run's `run.interrupted`, one per question: also the
    `X-Amelia-Delivery` of its webhook's pause delivery (`webhooks`)."""
    interrupt = row.interrupt or {}
    return f"{row.id}:interrupt:{interrupt.get('id') or row.attempt}"


class RunEvents:
    def __init__(self, event_log: EventLog, store: Store) -> None:
        self.event_log = event_log
        self.store = store

    def event(
        self,
        row: RunRow,
        event_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        event_id: str | None = None,
    ) -> events_pb2.Event:
        """An event of the run: subject and correlation id `runs/<uuid>`, `run` and `attempt` in
        its data. Its data is checked here (`check_json`, on the Python values: cheaper than
        the event log's walk of the built message), so it is published with `data_checked`."""
        name = run_name(row.id)
        # A run's input or output can be larger than an event may be; the event then carries a
        # preview and the whole value stays on the run.
        payload = fit_data(
            {"run": name, "attempt": row.attempt, **(data or {}), **telemetry.trace_fields()},
            self.event_log.settings.EVENTS_MAX_DATA_BYTES * 3 // 4,
            where=f"GetRun {name}",
        )
        try:
            check_json(payload, "event data")
        except InvalidArgumentError as exc:
            raise InvalidEventError(exc.message) from None
        return make_event(
            event_type,
            name,
            payload,
            source=self.event_log.source,
            event_id=event_id,
            correlation_id=name,
        )

    async def publish(self, event: events_pb2.Event) -> events_pb2.Event:
        """Publish one event of a run, built (and checked) by `event`; wait until it is stored."""
        return await self.event_log.publish_event(event, data_checked=True)

    async def started(
        self,
        row: RunRow,
        kind: str,
        timeout: float,
        pipeline: PublishPipeline,
        forked_from: dict[str, Any] | None = None,
    ) -> None:
        """The first pick-up is `<prefix>.started` (a fork's names the run and checkpoint it was
        forked from); later ones (answer, redelivery) `run.resumed`. A fork picked up again
        before its first checkpoint starts again (`reason` start).

        Sent through the pick-up's `pipeline`, ahead of the events its graph streams.
        """
        if kind in ("start", "fork") and row.attempt <= 1:
            target = row.agent_id or row.workflow or ""
            data: dict[str, Any] = {
                "target": target,
                "input": row.input or {},
                "timeout_seconds": timeout,
            }
            if forked_from:
                data["forked_from"] = forked_from
            event = self.event(
                row,
                f"{lifecycle_prefix(row)}.started",
                data,
                event_id=f"{row.id}:started",
            )
        else:
            event = self.event(row, "run.resumed", {"reason": "start" if kind == "fork" else kind})
        await pipeline.submit(event, data_checked=True)

    async def unfinished_nodes(self, row: RunRow) -> dict[str, str]:
        """The tasks of the run whose `run.node.started` is in its log with no
        `run.node.finished` after it, as {task id: node}, in the order they started: a pick-up
        that stopped mid-node left them so (read by a later pick-up, `Executor`). Raises
        `EventLogUnavailableError` when the log cannot be read."""
        start = StartAt.beginning()
        if row.create_time is not None:
            start = StartAt.at_time(row.create_time - CLOCK_MARGIN)
        unfinished: dict[str, str] = {}
        reader = self.event_log.read(
            [NODE_TYPES],
            run_name(row.id),
            start,
            follow=False,
            retry_for=self.event_log.settings.EVENTS_PUBLISH_TIMEOUT_SECONDS,
        )
        async with reader:
            async for event in reader:
                data = event_data(event)
                task = data.get("task")
                if not isinstance(task, str) or not task:
                    continue
                if event.type == "run.node.started":
                    unfinished.pop(task, None)  # (started again: in its new place)
                    unfinished[task] = str(data.get("node") or "")
                elif event.type == "run.node.finished":
                    unfinished.pop(task, None)
        return unfinished

    def recovered_finish(self, row: RunRow, task: str, node: str) -> events_pb2.Event:
        """`run.node.finished` for a task whose result is stored but whose end never reached
        the log (`recovered`: no duration or usage is known of it). Its id is fixed per task,
        so a pick-up that tells it again within JetStream's deduplication window stores it
        once."""
        return self.event(
            row,
            "run.node.finished",
            {"node": node, "task": task, "recovered": True},
            event_id=f"{row.id}:finished:{task}",
        )

    def question(self, row: RunRow) -> events_pb2.Event:
        """`run.interrupted` for a PAUSED run: the question its node asked (`row.interrupt`),
        with a fixed id, so whoever publishes it — the worker that paused it, or one repairing
        a crash (`runstate`, rule 3) — stores it once."""
        interrupt = row.interrupt or {}
        return self.event(
            row,
            "run.interrupted",
            {"node": interrupt.get("node", ""), "value": interrupt.get("value")},
            event_id=question_id(row),
        )

    async def ask(self, row: RunRow) -> None:
        """Publish the question of a run just PAUSED; then, if the run has a webhook, keep the
        question's sequence: the pause's delivery is due once the question is in the log."""
        await self._question_kept(row, await self.publish(self.question(row)))

    async def question_told(self, row: RunRow) -> None:
        """Publish a PAUSED run's question if the log does not have it: its worker stored the
        pause, then died (or lost NATS) before the event was stored. The run's last question in
        the log is read first, as the end events' `terminal_sequence` is, so that a question
        told long ago (beyond JetStream's window of deduplication) is not told again."""
        event = self.question(row)
        last = await self.event_log.last("run.interrupted", run_name(row.id))
        if last is None or last.id != event.id:
            last = await self.publish(event)
        await self._question_kept(row, last)

    async def _question_kept(self, row: RunRow, told: events_pb2.Event) -> None:
        if row.webhook and row.question_sequence != told.sequence:
            await self.store.set_question_sequence(row, told.sequence)

    async def terminal(self, row: RunRow) -> None:
        """Publish the end of a finished run (idempotent: fixed ids) and remember its sequence;
        nothing for a run that has not ended (see `runstate`, rule 4); then the thread's next
        run is admitted, if one waits behind it (`multitask.settle`). Each end event is
        published and acknowledged on its own, so a trace shows `publish run.completed` with
        its id and sequence (written through one pipeline they were one `publish events` span:
        one round trip less, not worth the lost span)."""
        event = None
        for end in end_events(row):
            event = await self.publish(self.event(row, end.type, end.data, event_id=end.event_id))
        if event is not None and await self.store.set_terminal_sequence(row.id, event.sequence):
            # Runs wait behind it, or a rollback left runs to delete (`multitask`).
            log = self.event_log
            await multitask.settle_quietly(self.store, log.js, log.settings, row.thread_id)
