"""Publishing a run's events: the lifecycle (`agent.*` / `workflow.*`, `run.*`) and its end.

Every event of a run has the subject `runs/<uuid>` and carries `run` and `attempt` in its data
(a worker that died mid-node leaves that node's tokens behind; the next attempt's tokens say a
higher `attempt`). A run's end is published after its status is stored, with fixed event ids, so
whoever publishes it — the worker, CancelRun, or a worker repairing a crash between the two —
stores it once; its sequence is kept on the run (`terminal_sequence`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from amelia.v1 import events_pb2
from amelia_agents.convert import run_name
from amelia_agents.models import RunRow, RunState
from amelia_agents.store import Store
from amelia_common import telemetry
from amelia_common.eventlog import EventLog, PublishPipeline, fit_data, make_event

TERMINAL_TYPES = ("run.completed", "run.failed", "run.cancelled")


def lifecycle_prefix(row: RunRow) -> str:
    """`agent` for agent runs, `workflow` for workflow runs (the seed's event families)."""
    return "agent" if row.agent_id else "workflow"


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
        its data."""
        name = run_name(row.id)
        # A run's input or output can be larger than an event may be; the event then carries a
        # preview and the whole value stays on the run.
        payload = fit_data(
            {"run": name, "attempt": row.attempt, **(data or {}), **telemetry.trace_fields()},
            self.event_log.settings.EVENTS_MAX_DATA_BYTES * 3 // 4,
            where=f"GetRun {name}",
        )
        return make_event(
            event_type,
            name,
            payload,
            source=self.event_log.source,
            event_id=event_id,
            correlation_id=name,
        )

    async def publish(
        self,
        row: RunRow,
        event_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        event_id: str | None = None,
    ) -> events_pb2.Event:
        """Publish one event of the run and wait until it is stored."""
        return await self.event_log.publish_event(
            self.event(row, event_type, data, event_id=event_id)
        )

    async def started(
        self, row: RunRow, kind: str, timeout: float, pipeline: PublishPipeline
    ) -> None:
        """The first pick-up is `<prefix>.started`; later ones (answer, redelivery) `run.resumed`.

        Sent through the pick-up's `pipeline`, ahead of the events its graph streams.
        """
        if kind == "start" and row.attempt <= 1:
            target = row.agent_id or row.workflow or ""
            event = self.event(
                row,
                f"{lifecycle_prefix(row)}.started",
                {"target": target, "input": row.input or {}, "timeout_seconds": timeout},
                event_id=f"{row.id}:started",
            )
        else:
            event = self.event(row, "run.resumed", {"reason": kind})
        await pipeline.submit(event)

    async def terminal(self, row: RunRow) -> None:
        """Publish the end of a finished run (idempotent) and remember its sequence."""
        prefix = lifecycle_prefix(row)
        usage = {"input_tokens": row.input_tokens or 0, "output_tokens": row.output_tokens or 0}
        duration = (
            (row.end_time - row.start_time).total_seconds()
            if row.end_time and row.start_time
            else 0.0
        )
        if row.status == RunState.COMPLETED.value:
            output = row.output or {}
            await self.publish(
                row,
                f"{prefix}.completed",
                {"output": output, "usage": usage},
                event_id=f"{row.id}:lifecycle-end",
            )
            event = await self.publish(
                row,
                "run.completed",
                {"output": output, "usage": usage, "duration_seconds": duration},
                event_id=f"{row.id}:end",
            )
        elif row.status == RunState.FAILED.value:
            await self.publish(
                row, f"{prefix}.failed", {"error": row.error}, event_id=f"{row.id}:lifecycle-end"
            )
            event = await self.publish(
                row,
                "run.failed",
                {"error": row.error, "usage": usage, "duration_seconds": duration},
                event_id=f"{row.id}:end",
            )
        elif row.status == RunState.CANCELLED.value:
            await self.publish(
                row, f"{prefix}.failed", {"error": "cancelled"}, event_id=f"{row.id}:lifecycle-end"
            )
            event = await self.publish(
                row,
                "run.cancelled",
                {"reason": row.error, "usage": usage},
                event_id=f"{row.id}:end",
            )
        else:
            return
        await self.store.set_terminal_sequence(row.id, event.sequence)
