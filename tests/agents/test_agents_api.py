"""The AgentService resources: agents, threads, workflows, run listing, and clear errors."""

from __future__ import annotations

import grpc
from agents_helpers import S, collect, create_run, rpc_error, wait_status

from amelia_agents import convert

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


async def test_agent_crud_with_defaults_and_update_mask(agents) -> None:
    created = (
        await agents.CreateAgent(
            S.CreateAgentRequest(
                agent_id="crud-agent",
                agent=S.Agent(system_prompt="Be brief.", model="offline:echo", temperature=0.0),
            )
        )
    ).agent
    assert created.name == "agents/crud-agent"
    assert created.display_name == "crud-agent"
    assert created.temperature == 0.0  # an explicit 0 is kept
    assert created.retry_attempts == 3
    assert created.max_tokens == 4096
    assert created.timeout.seconds == 300

    got = (await agents.GetAgent(S.GetAgentRequest(name="agents/crud-agent"))).agent
    assert got == created

    change = S.Agent(name="agents/crud-agent", system_prompt="Be verbose.", temperature=1.5)
    updated = (
        await agents.UpdateAgent(S.UpdateAgentRequest(agent=change, update_mask=["system_prompt"]))
    ).agent
    assert updated.system_prompt == "Be verbose."
    assert updated.temperature == 0.0  # not in the mask

    duplicate = await rpc_error(
        agents.CreateAgent(
            S.CreateAgentRequest(agent_id="crud-agent", agent=S.Agent(model="offline:echo"))
        )
    )
    assert duplicate.code() == grpc.StatusCode.ALREADY_EXISTS

    await agents.DeleteAgent(S.DeleteAgentRequest(name="agents/crud-agent"))
    gone = await rpc_error(agents.GetAgent(S.GetAgentRequest(name="agents/crud-agent")))
    assert gone.code() == NOT_FOUND and "agents/crud-agent" in gone.details()


async def test_bad_agents_are_refused_with_the_reason(agents) -> None:
    cases = [
        (S.CreateAgentRequest(agent_id="Bad_Id", agent=S.Agent(model="offline:echo")), "agent_id"),
        (S.CreateAgentRequest(agent=S.Agent(model="gpt-9")), "provider"),
        (S.CreateAgentRequest(agent=S.Agent(model="offline:dance")), "offline mode"),
        (S.CreateAgentRequest(agent=S.Agent(model="offline:echo", temperature=3)), "temperature"),
        (
            S.CreateAgentRequest(agent=S.Agent(model="offline:echo", context_sources=["x"])),
            "documents/",
        ),
    ]
    for request, word in cases:
        error = await rpc_error(agents.CreateAgent(request))
        assert error.code() == INVALID, request
        assert word in error.details(), error.details()
    mask = await rpc_error(
        agents.UpdateAgent(
            S.UpdateAgentRequest(agent=S.Agent(name="agents/x"), update_mask=["colour"])
        )
    )
    assert mask.code() == INVALID and "colour" in mask.details()
    missing = await rpc_error(
        agents.UpdateAgent(
            S.UpdateAgentRequest(agent=S.Agent(name="agents/nobody", model="offline:echo"))
        )
    )
    assert missing.code() == NOT_FOUND


async def test_list_agents_pages(agents) -> None:
    for i in range(5):
        await agents.CreateAgent(
            S.CreateAgentRequest(agent_id=f"page-agent-{i}", agent=S.Agent(model="offline:echo"))
        )
    names: list[str] = []
    token = ""
    while True:
        page = await agents.ListAgents(S.ListAgentsRequest(page_size=2, page_token=token))
        assert len(page.agents) <= 2
        names += [a.name for a in page.agents]
        token = page.next_page_token
        if not token:
            break
    mine = [n for n in names if n.startswith("agents/page-agent-")]
    assert mine == [f"agents/page-agent-{i}" for i in range(5)]
    assert len(names) == len(set(names))
    bad = await rpc_error(agents.ListAgents(S.ListAgentsRequest(page_token="garbage!")))
    assert bad.code() == INVALID


async def test_threads_and_their_deletion(agents) -> None:
    request = S.CreateThreadRequest()
    request.thread.metadata.update({"topic": "testing"})
    thread = (await agents.CreateThread(request)).thread
    assert thread.name.startswith("threads/")
    got = (await agents.GetThread(S.GetThreadRequest(name=thread.name))).thread
    assert got.metadata["topic"] == "testing"
    listed: list[str] = []
    token = ""
    while True:  # other tests' big threads may fill a page (pages are cut at 3 MiB)
        page = await agents.ListThreads(S.ListThreadsRequest(page_size=1000, page_token=token))
        listed += [t.name for t in page.threads]
        token = page.next_page_token
        if not token:
            break
    assert thread.name in listed

    run = await create_run(
        agents, workflow="workflows/echo", thread=thread.name, input={"message": "hello"}
    )
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    await agents.DeleteThread(S.DeleteThreadRequest(name=thread.name))
    for call in (
        agents.GetThread(S.GetThreadRequest(name=thread.name)),
        agents.GetRun(S.GetRunRequest(name=run.name)),
        agents.DeleteThread(S.DeleteThreadRequest(name=thread.name)),
    ):
        assert (await rpc_error(call)).code() == NOT_FOUND


async def test_list_workflows_describes_the_built_ins(agents) -> None:
    flows = {w.name: w for w in (await agents.ListWorkflows(S.ListWorkflowsRequest())).workflows}
    assert {"workflows/echo", "workflows/chat"} <= set(flows)
    assert "workflows/agent" not in flows
    echo = flows["workflows/echo"]
    assert list(echo.nodes) == ["echo"]
    assert echo.description
    assert list(echo.input_schema["required"]) == ["message"]


async def test_bad_run_requests_get_clear_errors(agents) -> None:
    def run_request(**fields: object) -> S.CreateRunRequest:
        request = S.CreateRunRequest(run=S.Run(**{k: v for k, v in fields.items() if k != "input"}))
        if "input" in fields:
            request.run.input.update(fields["input"])  # type: ignore[arg-type]
        return request

    cases = [
        (run_request(input={"message": "x"}), INVALID, "run.agent"),
        (run_request(agent="agents/nobody", input={"message": "x"}), NOT_FOUND, "agents/nobody"),
        (run_request(workflow="workflows/nope", input={"message": "x"}), NOT_FOUND, "echo"),
        (run_request(workflow="workflows/agent", input={"message": "x"}), NOT_FOUND, "available"),
        (run_request(workflow="workflows/echo"), INVALID, "input.message is required"),
        (run_request(workflow="workflows/echo", input={"message": ""}), INVALID, "empty"),
        (run_request(workflow="workflows/echo", input={"message": 3}), INVALID, "string"),
        (
            run_request(workflow="workflows/echo", thread="threads/42", input={"message": "x"}),
            INVALID,
            "threads/<uuid>",
        ),
        (
            run_request(
                workflow="workflows/echo",
                thread="threads/00000000-0000-0000-0000-000000000000",
                input={"message": "x"},
            ),
            NOT_FOUND,
            "does not exist",
        ),
    ]
    for request, code, word in cases:
        error = await rpc_error(agents.CreateRun(request))
        assert error.code() == code, (request, error.details())
        assert word in error.details(), error.details()
    for call, code in (
        (agents.GetRun(S.GetRunRequest(name="runs/nope")), INVALID),
        (
            agents.GetRun(S.GetRunRequest(name="runs/00000000-0000-0000-0000-000000000000")),
            NOT_FOUND,
        ),
        (
            agents.CancelRun(S.CancelRunRequest(name="runs/00000000-0000-0000-0000-000000000000")),
            NOT_FOUND,
        ),
        (
            agents.ResumeRun(S.ResumeRunRequest(name="runs/00000000-0000-0000-0000-000000000000")),
            INVALID,
        ),
        (agents.ListRuns(S.ListRunsRequest(page_size=-1)), INVALID),
    ):
        assert (await rpc_error(call)).code() == code
    stream = agents.StreamRun(S.StreamRunRequest(name="runs/00000000-0000-0000-0000-000000000000"))
    error = await rpc_error(_drain(stream))
    assert error.code() == NOT_FOUND


async def _drain(stream) -> None:
    async for _ in stream:
        pass


async def test_list_runs_filters_and_pages(agents) -> None:
    thread = (await agents.CreateThread(S.CreateThreadRequest())).thread
    names = []
    for i in range(3):
        run = await create_run(
            agents, workflow="workflows/echo", thread=thread.name, input={"message": f"run {i}"}
        )
        await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
        names.append(run.name)
    failed = await create_run(agents, workflow="workflows/test-raise", input={})
    await wait_status(agents, failed.name, S.RUN_STATUS_FAILED)

    pages, token = [], ""
    while True:
        page = await agents.ListRuns(
            S.ListRunsRequest(thread=thread.name, page_size=2, page_token=token)
        )
        pages.append([r.name for r in page.runs])
        token = page.next_page_token
        if not token:
            break
    assert pages == [names[::-1][:2], names[::-1][2:]]
    only_failed = await agents.ListRuns(
        S.ListRunsRequest(statuses=[S.RUN_STATUS_FAILED], workflow="workflows/test-raise")
    )
    assert failed.name in [r.name for r in only_failed.runs]
    assert all(r.status == S.RUN_STATUS_FAILED for r in only_failed.runs)
    request = S.ListRunsRequest(thread=thread.name)
    request.created_after.GetCurrentTime()
    assert (await agents.ListRuns(request)).runs == []


async def test_stream_run_reads_the_run_from_the_log_without_the_events_service(
    infra, agents, agents_settings
) -> None:
    """StreamRun reads the run's events from JetStream itself (docs/performance.md, session
    12): an agents service whose events service cannot be reached still streams a run, every
    event once, in sequence order, from the start and from the middle."""
    from amelia.v1 import agents_pb2_grpc
    from amelia_agents.server import build_service
    from amelia_common.embedded import free_port
    from amelia_common.grpc_client import aio_channel

    run = await create_run(agents, workflow="workflows/echo", input={"message": "hi"})
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    settings = agents_settings.model_copy(
        update={"EVENTS_ADDRESS": f"127.0.0.1:{free_port()}", "AGENT_WORKERS": 0}
    )
    service = await build_service(settings)
    port = await service.start()
    channel = aio_channel(f"127.0.0.1:{port}", settings)
    try:
        stub = agents_pb2_grpc.AgentServiceStub(channel)

        async def events(after: int) -> list:
            request = S.StreamRunRequest(name=run.name, after_sequence=after)
            return [response.event async for response in stub.StreamRun(request)]

        everything = await events(0)
        types = [event.type for event in everything]
        assert types[0] == "workflow.started" and types[-1] == "run.completed", types
        assert "run.token" in types
        sequences = [event.sequence for event in everything]
        assert sequences == sorted(set(sequences))
        middle = everything[len(everything) // 2].sequence
        assert [event.sequence for event in await events(middle)] == [
            s for s in sequences if s > middle
        ]
    finally:
        await channel.close()
        await service.stop(0.5)


async def test_nul_characters_are_refused_not_an_internal_error(agents) -> None:
    thread = S.CreateThreadRequest()
    thread.thread.metadata.update({"note": "a\x00b"})
    run = S.CreateRunRequest(run=S.Run(workflow="workflows/echo"))
    run.run.input.update({"message": "a\x00b"})
    agent = S.CreateAgentRequest(agent=S.Agent(model="offline:echo", system_prompt="a\x00b"))
    for call in (
        agents.CreateThread(thread),
        agents.CreateRun(run),
        agents.CreateAgent(agent),
    ):
        error = await rpc_error(call)
        assert error.code() == INVALID and "NUL" in error.details()


async def test_non_finite_numbers_are_refused_and_nothing_is_stored(agents) -> None:
    thread = S.CreateThreadRequest()
    thread.thread.metadata.update({"weight": float("nan")})
    run = S.CreateRunRequest(run=S.Run(workflow="workflows/echo"), request_id="non-finite-run")
    run.run.input.update({"message": "hi", "limit": float("inf")})
    before = len((await agents.ListThreads(S.ListThreadsRequest(page_size=1000))).threads)
    for call, field in (
        (agents.CreateThread(thread), "thread.metadata"),
        (agents.CreateRun(run), "run.input"),
    ):
        error = await rpc_error(call)
        assert error.code() == INVALID, error.details()
        assert error.details() == f"{field} must not contain NaN or Infinity"
    assert len((await agents.ListThreads(S.ListThreadsRequest(page_size=1000))).threads) == before

    paused = await create_run(agents, workflow="workflows/test-ask", input={"question": "Go?"})
    await wait_status(agents, paused.name, S.RUN_STATUS_PAUSED)
    answer = S.ResumeRunRequest(name=paused.name)
    answer.answer.struct_value.update({"choice": float("-inf")})
    error = await rpc_error(agents.ResumeRun(answer))
    assert (error.code(), error.details()) == (INVALID, "answer must not contain NaN or Infinity")
    still = (await agents.GetRun(S.GetRunRequest(name=paused.name))).run
    assert still.status == S.RUN_STATUS_PAUSED
    await agents.CancelRun(S.CancelRunRequest(name=paused.name))


async def test_timestamps_and_durations_out_of_range_are_invalid_argument(agents) -> None:
    far = S.ListRunsRequest()
    far.created_after.seconds = 10**15
    before_year_one = S.ListRunsRequest()
    before_year_one.created_before.seconds = -(10**15)
    bad_nanos = S.ListRunsRequest()
    bad_nanos.created_after.nanos = -1
    for request, field in ((far, "created_after"), (before_year_one, "created_before")):
        error = await rpc_error(agents.ListRuns(request))
        assert error.code() == INVALID and field in error.details(), error.details()
    assert (await rpc_error(agents.ListRuns(bad_nanos))).code() == INVALID

    huge = S.Agent(model="offline:echo")
    huge.timeout.seconds, huge.timeout.nanos = 1, 2**31 - 1
    mixed_signs = S.Agent(model="offline:echo")
    mixed_signs.timeout.seconds, mixed_signs.timeout.nanos = 5, -1
    too_long = S.Run(workflow="workflows/echo")
    too_long.input.update({"message": "x"})
    too_long.timeout.seconds = 10**15
    for call in (
        agents.CreateAgent(S.CreateAgentRequest(agent=huge)),
        agents.CreateAgent(S.CreateAgentRequest(agent=mixed_signs)),
        agents.CreateRun(S.CreateRunRequest(run=too_long)),
    ):
        error = await rpc_error(call)
        assert error.code() == INVALID and "not a valid duration" in error.details()

    # Output-only fields are ignored, whatever they hold (AIP-203).
    with_times = S.Agent(model="offline:echo")
    with_times.create_time.seconds = 10**15
    with_times.update_time.nanos = -5
    created = (
        await agents.CreateAgent(S.CreateAgentRequest(agent_id="output-only", agent=with_times))
    ).agent
    assert 0 < created.create_time.seconds < 10**11
    await agents.DeleteAgent(S.DeleteAgentRequest(name=created.name))


async def test_a_request_id_longer_than_the_gateways_limit_is_refused_naming_it(agents) -> None:
    """CreateRun, RerunRun and ForkRun take an idempotency key of at most 128 characters, the
    limit of the gateway's X-Request-Id; a longer one is INVALID_ARGUMENT and nothing starts."""
    done = await create_run(agents, workflow="workflows/echo", input={"message": "hi"})
    await wait_status(agents, done.name, S.RUN_STATUS_COMPLETED)
    before = len((await agents.ListRuns(S.ListRunsRequest(page_size=1000))).runs)
    too_long = "k" * 129
    create = S.CreateRunRequest(run=S.Run(workflow="workflows/echo"), request_id=too_long)
    create.run.input.update({"message": "hi"})
    for call in (
        agents.CreateRun(create),
        agents.RerunRun(S.RerunRunRequest(name=done.name, request_id=too_long)),
        agents.ForkRun(S.ForkRunRequest(name=done.name, checkpoint="x", request_id=too_long)),
    ):
        error = await rpc_error(call)
        assert (error.code(), error.details()) == (
            INVALID,
            "request_id must be at most 128 characters (got 129)",
        )
    assert len((await agents.ListRuns(S.ListRunsRequest(page_size=1000))).runs) == before
    create.request_id = "k" * 128
    first = (await agents.CreateRun(create)).run
    assert (await agents.CreateRun(create)).run.name == first.name
    await wait_status(agents, first.name, S.RUN_STATUS_COMPLETED)


async def test_a_stream_resumed_beyond_the_logs_end_is_out_of_range(agents) -> None:
    """A sequence saved before the log was wiped: StreamRun says so (as StreamEvents does)
    instead of waiting in silence for the log to reach it while the run's events go by."""
    run = await create_run(agents, workflow="workflows/test-ask", input={"question": "Go?"})
    await wait_status(agents, run.name, S.RUN_STATUS_PAUSED)
    beyond = 99_999_999_999

    async def first(after: int) -> S.StreamRunResponse:
        stream = agents.StreamRun(S.StreamRunRequest(name=run.name, after_sequence=after))
        return await anext(aiter(stream))

    error = await rpc_error(first(beyond))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert f"after_sequence {beyond} is beyond the end of the event log" in error.details()
    # A point the log has goes on as before: the run's question, from its first event.
    assert (await first(0)).event.type == "workflow.started"


def _nested(depth: int) -> dict[str, object]:
    """A run input `depth` levels of objects deep, the outermost counting as 1."""
    value: dict[str, object] = {"leaf": 1}
    for _ in range(depth - 2):
        value = {"a": value}
    return {"message": "deep", "d": value}


async def test_an_input_as_deep_as_accepted_reads_back_everywhere_and_a_deeper_one_is_refused(
    agents,
) -> None:
    """QA s25: an input nested 32 levels was accepted, then its thread's history failed INTERNAL
    and its `workflow.started` became `system.undecodable` for every reader (protobuf decodes
    100 levels of messages, and replies wrap the input deeper than it came)."""
    deepest = convert.MAX_JSON_DEPTH
    run = await create_run(agents, workflow="workflows/echo", input=_nested(deepest))
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert (await agents.GetRun(S.GetRunRequest(name=run.name))).run.input["d"]
    assert (await agents.ListRunSteps(S.ListRunStepsRequest(parent=run.name))).steps
    assert (await agents.GetThreadState(S.GetThreadStateRequest(thread=run.thread))).state
    history = await agents.ListThreadHistory(S.ListThreadHistoryRequest(parent=run.thread))
    assert history.states
    events = await collect(agents, run.name)
    assert events[0].type == "workflow.started" and "system.undecodable" not in [
        e.type for e in events
    ]
    for field, call in (
        ("run.input", lambda i: create_run(agents, workflow="workflows/echo", input=i)),
        (
            "thread.metadata",
            lambda i: agents.CreateThread(S.CreateThreadRequest(thread=S.Thread(metadata=i))),
        ),
    ):
        error = await rpc_error(call(_nested(deepest + 1)))
        assert error.code() == INVALID, field
        assert error.details() == (
            f"{field} is nested {deepest + 1} levels deep (objects and arrays); at most "
            f"{deepest} are accepted, so that every reply and event carrying it can be read"
        )
