"""A run's (and an agent's) `timeout` comes back as the Duration that was sent, to the
nanosecond, and one outside 1 s … 7 days is refused naming the range (QA s21 F8: `99999999999s`
came back `99999999999.000002560s`, having gone through a float; `0.000000001s` was accepted and
failed the run at once, "took longer than 1e-09s")."""

from __future__ import annotations

import grpc
import pytest
from agents_helpers import S, rpc_error, wait_status
from google.protobuf import duration_pb2

from amelia_agents.convert import duration_seconds, seconds_duration

INVALID = grpc.StatusCode.INVALID_ARGUMENT
# Sent as they are, each must come back as it is.
EXACT = [(1, 0), (1, 100_000_000), (86_399, 123_456_789), (604_799, 999_999_999), (604_800, 0)]
# Below a second or above 7 days.
OUTSIDE = [(0, 1), (0, 999_999_999), (604_800, 1), (99_999_999_999, 0)]


def _duration(seconds: int, nanos: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


def _run(seconds: int, nanos: int) -> S.Run:
    run = S.Run(workflow="workflows/echo", timeout=_duration(seconds, nanos))
    run.input.update({"message": "on time"})
    return run


def test_every_timeout_in_range_is_stored_and_read_back_exactly() -> None:
    """As the service keeps it: a float of seconds (the runs' and agents' column)."""
    for seconds in (*range(1, 3000, 7), *range(604_800 - 3000, 604_800)):
        for nanos in (0, 1, 999_999_999, 500_000_000, 123_456_789, seconds * 7919 % 10**9):
            back = seconds_duration(duration_seconds(_duration(seconds, nanos), "run.timeout"))
            assert (back.seconds, back.nanos) == (seconds, nanos)


async def test_a_runs_timeout_comes_back_as_it_was_sent(agents) -> None:
    for seconds, nanos in EXACT:
        created = (await agents.CreateRun(S.CreateRunRequest(run=_run(seconds, nanos)))).run
        assert (created.timeout.seconds, created.timeout.nanos) == (seconds, nanos)
        done = await wait_status(agents, created.name, S.RUN_STATUS_COMPLETED)
        assert done.timeout == _duration(seconds, nanos), done.timeout.ToJsonString()


@pytest.mark.parametrize(("seconds", "nanos"), OUTSIDE)
async def test_a_timeout_outside_a_second_to_7_days_is_refused_naming_the_range(
    agents, seconds: int, nanos: int
) -> None:
    before = len((await agents.ListRuns(S.ListRunsRequest(page_size=1000))).runs)
    error = await rpc_error(agents.CreateRun(S.CreateRunRequest(run=_run(seconds, nanos))))
    assert error.code() == INVALID, error.details()
    sent = _duration(seconds, nanos).ToJsonString()
    assert f"run.timeout {sent} is out of range: use 1s to 604800s (7 days)" in error.details()
    assert len((await agents.ListRuns(S.ListRunsRequest(page_size=1000))).runs) == before

    agent = S.Agent(model="offline:echo", timeout=_duration(seconds, nanos))
    error = await rpc_error(agents.CreateAgent(S.CreateAgentRequest(agent=agent)))
    assert error.code() == INVALID and "agent.timeout" in error.details(), error.details()


async def test_an_agents_timeout_comes_back_as_it_was_sent(agents) -> None:
    agent = S.Agent(model="offline:echo", timeout=_duration(86_399, 123_456_789))
    created = (
        await agents.CreateAgent(S.CreateAgentRequest(agent_id="exact-timeout", agent=agent))
    ).agent
    try:
        assert created.timeout.ToJsonString() == "86399.123456789s"
        got = (await agents.GetAgent(S.GetAgentRequest(name=created.name))).agent
        assert got.timeout == created.timeout
    finally:
        await agents.DeleteAgent(S.DeleteAgentRequest(name=created.name))
