"""The run's state machine (`amelia_agents.runstate`) in process, table-driven: which status each
transition may leave, the events that tell of an end, and what a worker does with a job."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from amelia_agents import runstate
from amelia_agents.models import RunRow, RunState
from amelia_agents.runstate import JobAction

Q, R, P = "QUEUED", "RUNNING", "PAUSED"
C, F, X = "COMPLETED", "FAILED", "CANCELLED"

# transition → the statuses it may leave (every other status refuses it: the store's UPDATE
# matches no row and the caller learns the status as it is).
ALLOWED = {
    "claim": {Q, R},
    "pause": {R},
    "resume": {P},
    "complete": {R},
    "fail": {R},
    "cancel": {Q, R, P},
}
TARGET = {"claim": R, "pause": P, "resume": Q, "complete": C, "fail": F, "cancel": X}


@pytest.mark.parametrize("transition", runstate.TRANSITIONS, ids=lambda t: t.name)
@pytest.mark.parametrize("status", list(RunState), ids=str)
def test_a_transition_leaves_only_its_sources(
    transition: runstate.Transition, status: RunState
) -> None:
    assert transition.allows(status) == (status.value in ALLOWED[transition.name])
    assert transition.target.value == TARGET[transition.name]


def test_an_ended_run_takes_no_transition_and_a_pick_up_ends_only_as_completed_or_failed() -> None:
    for status in (C, F, X):
        assert not any(t.allows(status) for t in runstate.TRANSITIONS)
    assert set(runstate.ENDS) == {RunState.COMPLETED, RunState.FAILED}


START = datetime(2026, 1, 1, tzinfo=UTC)


def _run(status: str, agent: bool = False, **fields: Any) -> RunRow:
    values: dict[str, Any] = {
        "id": uuid.UUID(int=7),
        "status": status,
        "agent_id": "ada" if agent else None,
        "workflow": None if agent else "echo",
        "error": "",
        "input_tokens": 3,
        "output_tokens": 4,
        "start_time": START,
        "end_time": START + timedelta(seconds=2.5),
        "terminal_sequence": None,
    }
    values.update(fields)
    return RunRow(**values)


USAGE = {"input_tokens": 3, "output_tokens": 4}
RID = str(uuid.UUID(int=7))
END_EVENTS = [
    # (run, the events of its end in order: type, data, id)
    (
        _run(C, output={"text": "hi"}),
        [
            ("workflow.completed", {"output": {"text": "hi"}, "usage": USAGE}, "lifecycle-end"),
            (
                "run.completed",
                {"output": {"text": "hi"}, "usage": USAGE, "duration_seconds": 2.5},
                "end",
            ),
        ],
    ),
    (
        _run(F, agent=True, error="boom"),
        [
            ("agent.failed", {"error": "boom"}, "lifecycle-end"),
            ("run.failed", {"error": "boom", "usage": USAGE, "duration_seconds": 2.5}, "end"),
        ],
    ),
    (
        _run(X, error="user asked", start_time=None),
        [
            ("workflow.cancelled", {"reason": "user asked"}, "lifecycle-end"),
            ("run.cancelled", {"reason": "user asked", "usage": USAGE}, "end"),
        ],
    ),
    (_run(R), []),
    (_run(P), []),
    (_run(Q), []),
]


@pytest.mark.parametrize(("row", "expected"), END_EVENTS, ids=lambda v: getattr(v, "status", ""))
def test_the_events_of_an_end_come_in_order_with_fixed_ids(
    row: RunRow, expected: list[tuple[str, dict[str, Any], str]]
) -> None:
    found = [(e.type, dict(e.data), e.event_id) for e in runstate.end_events(row)]
    assert found == [(t, d, f"{RID}:{suffix}") for t, d, suffix in expected]


AFTER_CLAIM = [
    # (run after the claim, claim won, job age in seconds, what the worker does)
    (_run(R), True, 0.0, JobAction.RUN),
    (None, False, 0.0, JobAction.RETRY_SOON),  # CreateRun has not committed yet
    (None, False, 29.0, JobAction.RETRY_SOON),
    (None, False, 31.0, JobAction.DROP),  # its CreateRun failed after queueing
    (_run(Q), False, 31.0, JobAction.RETRY_SOON),  # never acked while QUEUED, however old
    # ResumeRun queues a new job; this one is back after a crash: its question, if lost.
    (_run(P), False, 0.0, JobAction.TELL_QUESTION),
    (_run(C, terminal_sequence=12), False, 0.0, JobAction.SKIP),
    (_run(C), False, 0.0, JobAction.PUBLISH_END),  # a crash lost its end event
    (_run(F), False, 0.0, JobAction.PUBLISH_END),
    (_run(X, terminal_sequence=3), False, 0.0, JobAction.SKIP),
    (_run(X), False, 0.0, JobAction.PUBLISH_END),
]


@pytest.mark.parametrize(("row", "claimed", "age", "action"), AFTER_CLAIM)
def test_what_a_worker_does_with_a_job_after_its_claim(
    row: RunRow | None, claimed: bool, age: float, action: JobAction
) -> None:
    assert runstate.after_claim(row, claimed, age) is action
