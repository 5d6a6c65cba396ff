"""A run's steps read from its LangGraph checkpoints, the graph's shape, and forks.

Each checkpoint of the run's thread whose metadata names the run (`amelia_run`, set by the
executor's config) holds the state before a superstep and the tasks of that superstep; a task's
writes (its `result`) are the node's update, and the next checkpoint's time is when the update
was saved. A fork is LangGraph's time travel: `aupdate_state` on an earlier checkpoint, as the
node that ran before it, writes a new head checkpoint for the thread whose `next` is the chosen
step's node, tagged with the new run — so the executor, seeing its own checkpoint with nodes
left, continues from there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import START
from langgraph.pregel import Pregel
from langgraph.types import StateSnapshot

from amelia.v1 import agents_pb2
from amelia_agents import workflows
from amelia_agents.checkpoints import CONTINUED_KEY
from amelia_agents.convert import to_value
from amelia_agents.models import RunRow
from amelia_agents.stateupdate import AS_NODE_KEY, write_update
from amelia_common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    quoted,
)

# LangGraph's checkpoint ids are UUIDs (version 6, ordered in time); anything else names none.
_CHECKPOINT_ID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
RUN_KEY = "amelia_run"
# Set on a fork's head checkpoint: the run and checkpoint it was forked from (`forked_from`);
# plain strings (LangGraph keeps only scalar values of a config's metadata).
FORK_RUN_KEY = "amelia_forked_from"
FORK_CHECKPOINT_KEY = "amelia_forked_from_checkpoint"


def plain_json(value: Any) -> Any:
    """JSON values only (a state may hold other objects): anything else becomes its text."""
    return json.loads(json.dumps(value, default=str))


def workflow_of(row: RunRow) -> workflows.Workflow:
    name = workflows.AGENT_WORKFLOW if row.agent_id else (row.workflow or "")
    workflow = workflows.get(name)
    if workflow is None:
        raise FailedPreconditionError(f"workflow {name!r} is not available on this service")
    return workflow


def compiled(row: RunRow, checkpointer: BaseCheckpointSaver[Any] | None) -> Pregel[Any]:
    graph: Pregel[Any] = workflow_of(row).build(row.agent_config).compile(checkpointer=checkpointer)
    return graph


def edges(workflow: workflows.Workflow) -> list[agents_pb2.WorkflowEdge]:
    """The workflow's edges as LangGraph draws them (conditional ones: every possible target)."""
    drawn = workflow.build(None).compile().get_graph()
    return [
        agents_pb2.WorkflowEdge(source=e.source, target=e.target, conditional=e.conditional)
        for e in drawn.edges
    ]


async def history(row: RunRow, checkpointer: BaseCheckpointSaver[Any]) -> list[StateSnapshot]:
    """The run's checkpoints, oldest first: those it wrote, and the one a run without input
    continued from (written by an update or by the run before it; `CONTINUED_KEY`)."""
    graph = compiled(row, checkpointer)
    config = {"configurable": {"thread_id": str(row.thread_id)}}
    mine = str(row.id)
    found = [s async for s in graph.aget_state_history(config)]  # type: ignore[arg-type]
    return [s for s in reversed(found) if _run_of(s, mine)]


def _continued_by(snapshot: StateSnapshot) -> list[str]:
    """The runs that continued `snapshot` without input, in order (`CONTINUED_KEY`)."""
    marked = dict(snapshot.metadata or {}).get(CONTINUED_KEY)
    return [str(run) for run in marked] if isinstance(marked, list) else []


def _run_of(snapshot: StateSnapshot, run: str) -> bool:
    return dict(snapshot.metadata or {}).get(RUN_KEY) == run or run in _continued_by(snapshot)


def handed_on(snapshot: StateSnapshot, run: str) -> bool:
    """Whether a later run continued `snapshot`'s tasks after `run` (which wrote it, or continued
    it first): what they did there is that run's, not `run`'s."""
    continued = _continued_by(snapshot)
    return bool(continued) and continued[-1] != run


def _checkpoint_id(snapshot: StateSnapshot) -> str:
    return str(snapshot.config["configurable"]["checkpoint_id"])


def set_timestamp(target: Any, value: str | None) -> None:
    if value:
        target.FromDatetime(datetime.fromisoformat(value))


def to_steps(
    snapshots: list[StateSnapshot], cancelled: str | None = None, run: str = ""
) -> list[agents_pb2.RunStep]:
    """The run `run`'s steps; `cancelled` (the reason) when the run was cancelled: a step it
    stopped before it finished (LangGraph records the `CancelledError` as its error) reads
    CANCELLED. A step a later run continued (`handed_on`) shows what this run left it as:
    its question asked (INTERRUPTED), or stopped, never the later run's result."""
    steps: list[agents_pb2.RunStep] = []
    for index, snapshot in enumerate(snapshots):
        after = snapshots[index + 1] if index + 1 < len(snapshots) else None
        left = bool(run) and handed_on(snapshot, run)
        if left:
            after = None
        for task in snapshot.tasks:
            if left:
                task = task._replace(result=None, error=None)
            elif task.result is not None and task.error:
                # It failed (or was cancelled) once and ran to its end after: the end stands
                # (a continuation that ran the node a cancelled run had stopped in).
                task = task._replace(error=None)
            if task.name == START:
                continue  # the run's input being written, not a node
            step = agents_pb2.RunStep(
                node=task.name,
                task=task.id,
                step=int((snapshot.metadata or {}).get("step", 0)),
                checkpoint=_checkpoint_id(snapshot),
                error=str(task.error or ""),
            )
            step.input.update(plain_json(dict(snapshot.values or {})))
            for interrupt in task.interrupts:
                step.interrupts.add(node=task.name).value.CopyFrom(
                    to_value(plain_json(interrupt.value))
                )
            set_timestamp(step.start_time, snapshot.created_at)
            finished = task.result is not None or (after is not None and not task.error)
            if task.result is not None:
                step.update.CopyFrom(to_value(plain_json(task.result)))
            if cancelled is not None and not finished and not task.interrupts:
                step.state = agents_pb2.RUN_STEP_STATE_CANCELLED
                reason = f" ({cancelled})" if cancelled else ""
                step.error = f"cancelled: the run was cancelled{reason} while this step ran"
            elif task.error:
                step.state = agents_pb2.RUN_STEP_STATE_FAILED
            elif finished:
                step.state = agents_pb2.RUN_STEP_STATE_COMPLETED
                if after is not None:
                    set_timestamp(step.end_time, after.created_at)
            elif task.interrupts:
                step.state = agents_pb2.RUN_STEP_STATE_INTERRUPTED
            else:
                step.state = agents_pb2.RUN_STEP_STATE_PENDING
            steps.append(step)
    return steps


@dataclass(frozen=True)
class ForkPoint:
    checkpoint: str
    node: str  # the step's node: what the fork runs first
    before: str  # the node whose update led to the checkpoint ("": LangGraph finds it)


def is_checkpoint_id(value: str) -> bool:
    return bool(_CHECKPOINT_ID.match(value))


def checkpoint_id(value: str, field: str, listed_by: str = "ListThreadHistory") -> str:
    """`value`, a checkpoint id as LangGraph makes them (a UUID); INVALID_ARGUMENT naming the
    field and where ids are found (`listed_by`) for anything else, which names no checkpoint."""
    if not is_checkpoint_id(value):
        raise InvalidArgumentError(
            f"{field} {quoted(value)} is not a checkpoint id: take one from {listed_by}"
        )
    return value


async def fork_point(
    source: RunRow, checkpointer: BaseCheckpointSaver[Any], checkpoint: str
) -> ForkPoint:
    """The step of the run `source` saved as `checkpoint`; NotFoundError naming the run if it
    has none there."""
    snapshots = await history(source, checkpointer)
    for index, snapshot in enumerate(snapshots):
        if _checkpoint_id(snapshot) != checkpoint:
            continue
        nodes = [t.name for t in snapshot.tasks if t.name != START]
        if not nodes:
            raise FailedPreconditionError(
                f"checkpoint {checkpoint} is the end of the run: there is no step to fork from"
            )
        if index:  # the node whose update led here: the previous step's
            previous = [t.name for t in snapshots[index - 1].tasks]
            return ForkPoint(checkpoint, nodes[0], previous[0] if previous else START)
        return ForkPoint(checkpoint, nodes[0], await _written_as(source, checkpointer, snapshot))
    raise NotFoundError(
        f"runs/{source.id} has no step with checkpoint {checkpoint!r}; see ListRunSteps"
    )


async def _written_as(
    source: RunRow, checkpointer: BaseCheckpointSaver[Any], snapshot: StateSnapshot
) -> str:
    """The node a run's first step's checkpoint was written as, when no step of the run comes
    before it (a fork's head, a continuation's): an update's `as_node` (kept as `AS_NODE_KEY`),
    else the node its parent checkpoint ran; "" (LangGraph finds one) when neither is known."""
    metadata = dict(snapshot.metadata or {})
    if metadata.get(AS_NODE_KEY):
        return str(metadata[AS_NODE_KEY])
    if metadata.get("source") != "loop" or snapshot.parent_config is None:
        return ""
    parent = await compiled(source, checkpointer).aget_state(snapshot.parent_config)
    ran = [t.name for t in parent.tasks]
    return ran[0] if ran else ""


async def write_fork(
    row: RunRow,
    source: RunRow,
    point: ForkPoint,
    values: dict[str, Any],
    graph: Pregel[Any],
) -> None:
    """Make the fork the head of the thread, tagged with the new run `row`, on `graph` (the
    source's, `compiled`)."""
    config = {
        "configurable": {
            "thread_id": str(row.thread_id),
            "checkpoint_ns": "",
            "checkpoint_id": point.checkpoint,
        },
        "metadata": {
            RUN_KEY: str(row.id),
            FORK_RUN_KEY: f"runs/{source.id}",
            FORK_CHECKPOINT_KEY: point.checkpoint,
        },
    }
    await write_update(graph, config, values, point.before)


def forked_from(snapshot: StateSnapshot) -> dict[str, Any] | None:
    """The source run and checkpoint of a fork not yet run (its head is still the checkpoint
    `write_fork` made, LangGraph's `update`); None for any other checkpoint."""
    metadata: dict[str, Any] = dict(snapshot.metadata or {})
    if metadata.get("source") != "update" or not metadata.get(FORK_RUN_KEY):
        return None
    return {"run": metadata[FORK_RUN_KEY], "checkpoint": metadata.get(FORK_CHECKPOINT_KEY, "")}
