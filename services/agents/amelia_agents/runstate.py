"""The run's state machine: every transition of a run's status, the events that tell of it, and
the rules that keep the stored status, the event log and the run queue in step.

    CreateRun ─► QUEUED ─claim─► RUNNING ─complete/fail─► COMPLETED / FAILED
                   ▲               │  ▲ (claim again: a pick-up after a crash or an outage)
                   └──resume── PAUSED ◄──pause──┘
    cancel: QUEUED, RUNNING or PAUSED ─► CANCELLED

`store` applies a transition as one conditional UPDATE allowed only from its `sources` (so the
API and any number of workers race on a run and exactly one wins); `lifecycle` publishes its
events; `executor` and `worker` decide which transition a pick-up takes. The rules:

1. A run is recorded and its job queued in one transaction (the job is queued just before the
   commit): a run is never stored without a job, and a job may arrive before its run is
   visible (the worker then waits for that transaction's end: `Store.wait_until_recorded`).
2. A job is never acked while its run is QUEUED (it may be the not-yet-visible run of rule 1):
   it is given back; one whose run never appeared in ORPHAN_JOB_SECONDS is dropped.
3. A job whose run is PAUSED or has ended is acked and skipped; an ended run whose end event is
   not stored yet (`terminal_sequence` unset: a crash between the two) gets it published first,
   and a PAUSED run whose question (`run.interrupted`) the log lacks gets it published first.
   (The paused run's job is acked only after its question is stored: a job of a PAUSED run
   comes back only after such a crash, or NATS lost while it was told.)
4. End events are published after the end status is stored, with fixed ids (`<run>:end`,
   `<run>:lifecycle-end`), so whoever publishes them — the worker, CancelRun, a worker
   repairing a crash — stores them once; the end event's sequence is kept on the run.
5. A resumed run's job is queued after its status is stored; if NATS refuses it, the run stays
   QUEUED and the reconciler queues it (as it does for any QUEUED/RUNNING run without a job).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from amelia_agents.models import RunRow, RunState

Q, R, P = RunState.QUEUED, RunState.RUNNING, RunState.PAUSED
ORPHAN_JOB_SECONDS = 30.0


@dataclass(frozen=True)
class Transition:
    name: str
    sources: frozenset[RunState]
    target: RunState
    # What tells of it, published after the status is stored (the claim's start event goes
    # ahead of the graph's events, through the pick-up's pipeline).
    events: str

    def allows(self, status: str | RunState) -> bool:
        return RunState(status) in self.sources

    @property
    def source_values(self) -> list[str]:
        return sorted(s.value for s in self.sources)


CLAIM = Transition("claim", frozenset({Q, R}), R, "<prefix>.started, or run.resumed")
PAUSE = Transition("pause", frozenset({R}), P, "run.interrupted")
RESUME = Transition("resume", frozenset({P}), Q, "none: a new job is queued")
COMPLETE = Transition("complete", frozenset({R}), RunState.COMPLETED, "end events")
FAIL = Transition("fail", frozenset({R}), RunState.FAILED, "end events")
CANCEL = Transition("cancel", frozenset({Q, R, P}), RunState.CANCELLED, "end events")

TRANSITIONS = (CLAIM, PAUSE, RESUME, COMPLETE, FAIL, CANCEL)
ENDS = {t.target: t for t in (COMPLETE, FAIL)}  # the ends a pick-up decides itself


def lifecycle_prefix(row: RunRow) -> str:
    """`agent` for agent runs, `workflow` for workflow runs (the seed's event families)."""
    return "agent" if row.agent_id else "workflow"


@dataclass(frozen=True)
class EndEvent:
    type: str
    data: Mapping[str, Any]
    event_id: str


def end_events(row: RunRow) -> list[EndEvent]:
    """The events that tell of an ended run, in order (the last is the run's end, whose
    sequence is kept); none for a run that has not ended."""
    prefix = lifecycle_prefix(row)
    usage = {"input_tokens": row.input_tokens or 0, "output_tokens": row.output_tokens or 0}
    if row.interrupted_input_tokens or row.interrupted_output_tokens:
        # Of them, the calls of nodes an interrupted attempt did not finish (`TokenUsage`).
        usage["interrupted_input_tokens"] = row.interrupted_input_tokens or 0
        usage["interrupted_output_tokens"] = row.interrupted_output_tokens or 0
    duration = (
        (row.end_time - row.start_time).total_seconds() if row.end_time and row.start_time else 0.0
    )
    lifecycle_id, end_id = f"{row.id}:lifecycle-end", f"{row.id}:end"
    if row.status == RunState.COMPLETED.value:
        output = row.output or {}
        return [
            EndEvent(f"{prefix}.completed", {"output": output, "usage": usage}, lifecycle_id),
            EndEvent(
                "run.completed",
                {"output": output, "usage": usage, "duration_seconds": duration},
                end_id,
            ),
        ]
    if row.status == RunState.FAILED.value:
        return [
            EndEvent(f"{prefix}.failed", {"error": row.error}, lifecycle_id),
            EndEvent(
                "run.failed",
                {"error": row.error, "usage": usage, "duration_seconds": duration},
                end_id,
            ),
        ]
    if row.status == RunState.CANCELLED.value:
        return [
            # A cancel is not a failure: its own lifecycle event, with the reason.
            EndEvent(f"{prefix}.cancelled", {"reason": row.error}, lifecycle_id),
            EndEvent("run.cancelled", {"reason": row.error, "usage": usage}, end_id),
        ]
    return []


def timed_out(seconds: float) -> str:
    """A run's error when it ran out of time, saying how to give the next one more."""
    return (
        f"timeout: the run took longer than {seconds:g}s; give a run more time with its own "
        "timeout (`amelia run --timeout SECONDS`, CreateRun `run.timeout`) or the agent's "
        "(`amelia agents create --timeout SECONDS`, the agent's `timeout`)"
    )


class JobAction(enum.Enum):
    """What a worker does with a job once its claim was tried (rules 2 and 3)."""

    RUN = "run"  # claimed: execute it
    RETRY_SOON = "retry soon"  # the run is not visible yet, or still QUEUED: give the job back
    DROP = "drop"  # the run was never recorded: ack the job, nothing to run
    PUBLISH_END = "publish the end"  # ended, its end event lost: publish it, then ack
    TELL_QUESTION = "tell the question"  # paused: its question published if lost, then ack
    SKIP = "skip"  # ended (or queued behind its thread's run): ack, nothing to do


def after_claim(row: RunRow | None, claimed: bool, job_age_seconds: float) -> JobAction:
    """The job's fate from the claim's answer: the run after it (None if not recorded), whether
    this claim won, and how long ago the job was queued."""
    if claimed:
        return JobAction.RUN
    if row is None:
        return JobAction.DROP if job_age_seconds > ORPHAN_JOB_SECONDS else JobAction.RETRY_SOON
    if row.status == RunState.QUEUED.value:
        # Waiting behind its thread's run (`multitask`): its admission queues a job of its own.
        return JobAction.SKIP if row.queued_behind else JobAction.RETRY_SOON
    if row.status == P.value:
        return JobAction.TELL_QUESTION
    ended = RunState(row.status) not in (Q, R, P)
    if ended and row.terminal_sequence is None:
        return JobAction.PUBLISH_END
    return JobAction.SKIP
