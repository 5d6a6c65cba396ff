"""Runs end to end: streaming, providers, failures, cancel, human in the loop, thread memory."""

from __future__ import annotations

import grpc
from agents_helpers import (
    S,
    chat_on_one_thread,
    collect,
    create_run,
    data,
    rpc_error,
    tokens,
    types,
    wait_status,
)

from amelia_common.embedded import process_alive


async def test_echo_streams_tokens_in_order_and_output_is_their_concatenation(agents) -> None:
    message = "the quick brown fox jumps over the lazy dog"
    run = await create_run(agents, workflow="workflows/echo", input={"message": message})
    assert run.status == S.RUN_STATUS_QUEUED
    events = await collect(agents, run.name)
    assert types(events)[0] == "workflow.started"
    assert types(events)[-1] == "run.completed"
    assert "run.node.started" in types(events) and "run.node.finished" in types(events)
    assert "".join(tokens(events)) == message
    assert len(tokens(events)) == len(message.split())
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == message
    assert done.usage.output_tokens == len(message.split())
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert data(events, "run.completed")[0]["output"] == {"message": message}


async def _agent(stub, agent_id: str, model: str, **fields) -> str:
    agent = S.Agent(model=model, system_prompt=f"You are {agent_id}.", **fields)
    created = await stub.CreateAgent(S.CreateAgentRequest(agent=agent, agent_id=agent_id))
    return created.agent.name


async def test_anthropic_agent_streams_through_the_real_sdk(agents, fake_anthropic) -> None:
    from agents_fake_llm import REPLY

    name = await _agent(agents, "anthropic-tokens", "anthropic:tokens")
    before = len(fake_anthropic.requests)
    run = await create_run(agents, agent=name, input={"message": "Say hello"})
    events = await collect(agents, run.name)
    assert types(events)[0] == "agent.started"
    assert "agent.completed" in types(events)
    assert types(events)[-1] == "run.completed"
    assert "".join(tokens(events)) == REPLY
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == REPLY
    assert done.usage.input_tokens == 25
    assert done.usage.output_tokens == len(tokens(events))
    request = fake_anthropic.requests[before]
    sent = request["headers"].get("x-api-key") or request["headers"]["authorization"]
    assert sent.endswith("sk-ant-test-key")
    assert request["body"]["system"] == "You are anthropic-tokens."
    assert request["body"]["stream"] is True
    assert request["body"]["messages"] == [{"role": "user", "content": "Say hello"}]


async def test_openai_compatible_agent_streams_through_the_real_sdk(agents, fake_openai) -> None:
    from agents_fake_llm import REPLY

    name = await _agent(agents, "openai-tokens", f"openai:tokens@{fake_openai.url}/v1")
    run = await create_run(agents, agent=name, input={"message": "Say hello"})
    events = await collect(agents, run.name)
    assert "".join(tokens(events)) == REPLY
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == REPLY
    assert (done.usage.input_tokens, done.usage.output_tokens) == (11, len(tokens(events)))
    body = fake_openai.requests[-1]["body"]
    assert body["messages"][0] == {"role": "system", "content": "You are openai-tokens."}
    assert body["stream"] is True


async def test_transient_errors_are_retried_then_succeed(
    agents, fake_anthropic, fake_openai
) -> None:
    from agents_fake_llm import REPLY

    for model, server in (
        ("anthropic:flaky-a1", fake_anthropic),
        (f"openai:flaky-o1@{fake_openai.url}/v1", fake_openai),
    ):
        name = await _agent(agents, f"flaky-{server.__class__.__name__.lower()}", model)
        run = await create_run(agents, agent=name, input={"message": "hi"})
        events = await collect(agents, run.name)
        retries = data(events, "run.retry")
        assert len(retries) == 1, types(events)
        assert "529" in retries[0]["error"] or "503" in retries[0]["error"]
        assert types(events)[-1] == "run.completed"
        assert "".join(tokens(events)) == REPLY
        assert server.attempts[model.split(":", 1)[1].split("@")[0]] == 2


async def test_retries_are_bounded_by_retry_attempts(agents, fake_anthropic) -> None:
    name = await _agent(agents, "always-down", "anthropic:down-1", retry_attempts=2)
    before = len(fake_anthropic.requests)
    run = await create_run(agents, agent=name, input={"message": "hi"})
    events = await collect(agents, run.name)
    assert types(events)[-2:] == ["agent.failed", "run.failed"]
    assert len(data(events, "run.retry")) == 2
    failed = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    assert "529" in failed.error and "overloaded" in failed.error.lower()
    assert len(fake_anthropic.requests) - before == 3


async def test_missing_api_key_fails_the_run_naming_the_key(agents, agents_settings) -> None:
    name = await _agent(agents, "needs-openai-key", "openai:gpt-4o-mini")
    run = await create_run(agents, agent=name, input={"message": "hi"})
    events = await collect(agents, run.name)
    assert types(events)[-1] == "run.failed"
    failed = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    assert "OPENAI_API_KEY" in failed.error

    from amelia_agents.llm import ProviderConfigError, get_model

    no_key = agents_settings.model_copy(
        update={"ANTHROPIC_API_KEY": type(agents_settings.ANTHROPIC_API_KEY)("")}
    )
    try:
        get_model("anthropic:claude-sonnet-4-5", no_key)
    except ProviderConfigError as exc:
        assert "ANTHROPIC_API_KEY" in str(exc)
        # Claude as the default with LOCAL_MODEL off: the message names the way out (QA s24).
        assert "LOCAL_MODEL is 'off'" in str(exc)
    else:
        raise AssertionError("no error without ANTHROPIC_API_KEY")


async def test_timeout_fails_the_run_with_timeout(agents) -> None:
    run = await create_run(
        agents, workflow="workflows/test-sleep", input={"seconds": 60}, timeout=1
    )
    events = await collect(agents, run.name)
    assert types(events)[-2:] == ["workflow.failed", "run.failed"]
    failed = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    assert failed.error.startswith("timeout: the run took longer than 1s; give a run more time")
    assert "`amelia run --timeout SECONDS`, CreateRun `run.timeout`" in failed.error
    assert data(events, "run.failed")[0]["error"] == failed.error


async def test_an_exception_fails_the_run_with_its_message(agents) -> None:
    run = await create_run(agents, workflow="workflows/test-raise", input={})
    events = await collect(agents, run.name)
    assert types(events)[-2:] == ["workflow.failed", "run.failed"]
    failed = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    assert failed.error == "ValueError: boom in node"
    finished = data(events, "run.node.finished")
    assert finished and "boom in node" in finished[-1]["error"]


async def _stream_until(stub, name: str, predicate, timeout: float = 30):
    """Start StreamRun in the background; return (task, first events up to `predicate`)."""
    import asyncio

    seen: list = []
    ready = asyncio.Event()

    async def read() -> list:
        async for response in stub.StreamRun(S.StreamRunRequest(name=name)):
            seen.append(response.event)
            if predicate(seen):
                ready.set()
        return seen

    task = asyncio.create_task(read())
    await asyncio.wait_for(ready.wait(), timeout)
    return task, seen


async def test_cancel_mid_stream_stops_the_model_call(agents, fake_anthropic) -> None:
    import asyncio
    import time

    import grpc
    from agents_helpers import rpc_error

    name = await _agent(agents, "slow-talker", "anthropic:slow")
    disconnects = fake_anthropic.disconnects
    run = await create_run(agents, agent=name, input={"message": "talk slowly"})
    task, _ = await _stream_until(agents, run.name, lambda ev: len(tokens(ev)) >= 3)
    started = time.monotonic()
    cancelled = (await agents.CancelRun(S.CancelRunRequest(name=run.name, reason="enough"))).run
    assert time.monotonic() - started < 1.0
    assert cancelled.status == S.RUN_STATUS_CANCELLED
    assert cancelled.error == "enough"
    events = await asyncio.wait_for(task, 10)
    assert types(events)[-2:] == ["agent.cancelled", "run.cancelled"]
    assert data(events, "run.cancelled")[0]["reason"] == "enough"
    assert 3 <= len(tokens(events)) < 200
    # The tokens streamed before the cancel count: Anthropic's message_start said 25 in; out,
    # at least the deltas shown (one may have been read, not shown, when the cancel came).
    assert cancelled.usage.input_tokens == 25
    assert len(tokens(events)) <= cancelled.usage.output_tokens <= len(tokens(events)) + 1
    stored = {"input_tokens": 25, "output_tokens": cancelled.usage.output_tokens}
    assert data(events, "run.cancelled")[0]["usage"] == stored
    # The HTTP stream to the model was closed: nothing is left streaming.
    for _ in range(100):
        if fake_anthropic.disconnects > disconnects and fake_anthropic.streams_open == 0:
            break
        await asyncio.sleep(0.05)
    assert fake_anthropic.disconnects == disconnects + 1
    assert fake_anthropic.streams_open == 0
    # A second cancel, and a resume, are refused.
    again = await rpc_error(agents.CancelRun(S.CancelRunRequest(name=run.name)))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already ended" in again.details()
    resume = S.ResumeRunRequest(name=run.name)
    resume.answer.string_value = "x"
    refused = await rpc_error(agents.ResumeRun(resume))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_cancelled_call_whose_server_sent_no_usage_yet_counts_an_estimate(
    agents, fake_openai
) -> None:
    """OpenAI-compatible servers send usage only at the end of the stream: a call cancelled
    before it counts the deltas it streamed, and its prompt at 4 characters a token."""
    import asyncio

    message = "talk slowly, one token at a time, please"
    name = await _agent(agents, "slow-openai", f"openai:slow@{fake_openai.url}/v1")
    run = await create_run(agents, agent=name, input={"message": message})
    task, _ = await _stream_until(agents, run.name, lambda ev: len(tokens(ev)) >= 3)
    cancelled = (await agents.CancelRun(S.CancelRunRequest(name=run.name))).run
    assert cancelled.status == S.RUN_STATUS_CANCELLED
    events = await asyncio.wait_for(task, 10)
    shown = len(tokens(events))
    assert 3 <= shown < 200
    sent = next(r["body"] for r in fake_openai.requests if r["body"]["model"] == "slow")
    prompt = sum(len(m["content"]) for m in sent["messages"])
    assert cancelled.usage.input_tokens == -(-prompt // 4)
    assert shown <= cancelled.usage.output_tokens <= shown + 1
    assert data(events, "run.cancelled")[0]["usage"] == {
        "input_tokens": cancelled.usage.input_tokens,
        "output_tokens": cancelled.usage.output_tokens,
    }


async def test_cancel_kills_a_running_subprocess_and_its_children(agents, tmp_path) -> None:
    import asyncio

    pidfile = tmp_path / "pids"
    run = await create_run(
        agents, workflow="workflows/test-process", input={"pidfile": str(pidfile)}
    )
    task, _ = await _stream_until(
        agents, run.name, lambda ev: any(e.type == "run.tool.output" for e in ev)
    )
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2 and all(process_alive(p) for p in pids)
    cancelled = (await agents.CancelRun(S.CancelRunRequest(name=run.name))).run
    assert cancelled.status == S.RUN_STATUS_CANCELLED
    events = await asyncio.wait_for(task, 10)
    assert types(events)[-1] == "run.cancelled"
    called = data(events, "run.tool.called")
    assert called and called[0]["tool"] == "shell"
    assert any("started" in d["text"] for d in data(events, "run.tool.output"))
    assert not any(process_alive(p) for p in pids), (
        "the subprocess or its child survived the cancel"
    )


async def test_cancel_of_a_paused_run_needs_no_worker(agents) -> None:
    import asyncio

    import grpc
    from agents_helpers import rpc_error

    run = await create_run(agents, workflow="workflows/test-ask", input={"question": "Go?"})
    await wait_status(agents, run.name, S.RUN_STATUS_PAUSED)
    cancelled = (await agents.CancelRun(S.CancelRunRequest(name=run.name))).run
    assert cancelled.status == S.RUN_STATUS_CANCELLED
    events = await asyncio.wait_for(collect(agents, run.name), 10)
    assert types(events)[-1] == "run.cancelled"
    again = await rpc_error(agents.CancelRun(S.CancelRunRequest(name=run.name)))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_interrupt_pauses_with_the_question_and_resume_continues(agents) -> None:
    import grpc
    from agents_helpers import rpc_error

    run = await create_run(
        agents, workflow="workflows/test-ask", input={"question": "Deploy to prod?"}
    )
    paused = await wait_status(agents, run.name, S.RUN_STATUS_PAUSED)
    assert paused.interrupt.node == "ask"
    assert paused.interrupt.value.struct_value["question"] == "Deploy to prod?"
    # Another run in the same thread must wait.
    blocked = S.CreateRunRequest(run=S.Run(workflow="workflows/echo", thread=paused.thread))
    blocked.run.input.update({"message": "me too"})
    busy = await rpc_error(agents.CreateRun(blocked))
    assert busy.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"already has an active run, {run.name} (PAUSED);" in busy.details()
    assert "or create the run with a multitask_strategy" in busy.details()

    resume = S.ResumeRunRequest(name=run.name)
    resume.answer.string_value = "yes"
    resumed = (await agents.ResumeRun(resume)).run
    assert resumed.status == S.RUN_STATUS_QUEUED
    twice = await rpc_error(agents.ResumeRun(resume))
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["result"] == "answer was yes"
    assert not done.HasField("interrupt")
    events = await collect(agents, run.name)
    interrupted = data(events, "run.interrupted")
    assert interrupted == [
        {"run": run.name, "attempt": 1, "node": "ask", "value": {"question": "Deploy to prod?"}}
    ]
    resumed_events = data(events, "run.resumed")
    assert resumed_events and resumed_events[0]["reason"] == "answer"
    assert types(events)[-1] == "run.completed"
    # The ask node ran before the pause and again on resume; finish ran once.
    started = [d["node"] for d in data(events, "run.node.started")]
    assert started.count("finish") == 1


async def test_second_run_in_a_thread_sees_the_first_runs_messages(agents, fake_anthropic) -> None:
    first, second = await chat_on_one_thread(
        agents, ("My name is Ada.", "offline:echo"), ("What is my name?", "offline:transcript")
    )
    assert second.output["message"] == (
        "user: My name is Ada.\nassistant: My name is Ada.\nuser: What is my name?"
    )
    # The same through an agent and the Anthropic SDK: the model is sent the whole thread.
    name = await _agent(agents, "memory-agent", "anthropic:transcript")
    third = await create_run(agents, agent=name, thread=first.thread, input={"message": "And now?"})
    await wait_status(agents, third.name, S.RUN_STATUS_COMPLETED)
    sent = fake_anthropic.requests[-1]["body"]["messages"]
    assert [m["content"] for m in sent][:2] == ["My name is Ada.", "My name is Ada."]
    assert sent[-1] == {"role": "user", "content": "And now?"}
    runs = (await agents.ListRuns(S.ListRunsRequest(thread=first.thread))).runs
    assert [r.name for r in runs] == [third.name, second.name, first.name]


async def test_create_run_is_idempotent_by_request_id(agents) -> None:
    request = S.CreateRunRequest(
        run=S.Run(workflow="workflows/echo"), request_id="req-idempotent-1"
    )
    request.run.input.update({"message": "once"})
    first = (await agents.CreateRun(request)).run
    second = (await agents.CreateRun(request)).run
    assert first.name == second.name
    await wait_status(agents, first.name, S.RUN_STATUS_COMPLETED)
    runs = (await agents.ListRuns(S.ListRunsRequest(thread=first.thread))).runs
    assert len(runs) == 1
    # The same key for another request is a client's bug: said, not answered with the old run.
    other_input = S.CreateRunRequest()
    other_input.CopyFrom(request)
    other_input.run.input.update({"message": "twice"})
    other_workflow = S.CreateRunRequest()
    other_workflow.CopyFrom(request)
    other_workflow.run.workflow = "workflows/test-ask"
    for call, differs in ((other_input, "input"), (other_workflow, "workflow")):
        error = await rpc_error(agents.CreateRun(call))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error.details()
        assert error.details().startswith(
            f"request_id 'req-idempotent-1' already made {first.name} with a different {differs};"
        )
    assert len((await agents.ListRuns(S.ListRunsRequest(thread=first.thread))).runs) == 1


async def test_stream_of_a_finished_run_replays_and_resumes_after_a_sequence(agents) -> None:
    run = await create_run(agents, workflow="workflows/echo", input={"message": "one two three"})
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    everything = await collect(agents, run.name)
    assert types(everything)[-1] == "run.completed"
    middle = everything[2].sequence
    tail = await collect(agents, run.name, after=middle)
    assert [e.id for e in tail] == [e.id for e in everything[3:]]
    assert await collect(agents, run.name, after=everything[-1].sequence) == []


async def test_two_questions_in_a_row_each_get_their_own_answer(agents) -> None:
    import asyncio

    async def asked(question: str) -> S.Run:
        for _ in range(600):
            run_now = (await agents.GetRun(S.GetRunRequest(name=run.name))).run
            if (
                run_now.status == S.RUN_STATUS_PAUSED
                and run_now.interrupt.value.struct_value["question"] == question
            ):
                return run_now
            await asyncio.sleep(0.05)
        raise AssertionError(f"never asked {question!r}")

    run = await create_run(agents, workflow="workflows/test-ask-twice", input={})
    for question, answer in (("first?", "a"), ("second?", "b")):
        await asked(question)
        resume = S.ResumeRunRequest(name=run.name)
        resume.answer.string_value = answer
        queued = (await agents.ResumeRun(resume)).run
        assert not queued.HasField("interrupt")
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["result"] == "a,b"
    events = await collect(agents, run.name)
    questions = [d["value"]["question"] for d in data(events, "run.interrupted")]
    assert questions == ["first?", "second?"]


async def test_a_run_longer_than_the_ack_wait_is_kept_by_heartbeats(
    agents, agents_settings
) -> None:
    seconds = agents_settings.RUN_ACK_WAIT_SECONDS + 1.5
    run = await create_run(agents, workflow="workflows/test-sleep", input={"seconds": seconds})
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED, timeout=30)
    assert done.attempt == 1  # never redelivered to another worker
    events = await collect(agents, run.name)
    assert "run.resumed" not in types(events)
    assert done.duration.ToTimedelta().total_seconds() >= seconds


async def test_a_run_larger_than_an_event_ends_and_its_events_carry_a_preview(agents) -> None:
    """The whole output stays on the run; its events stay within EVENTS_MAX_DATA_BYTES."""
    # ~650 KB in 6,500 tokens: larger than the 512 KiB an event may be.
    message = " ".join(f"{i:06d}" + "x" * 94 for i in range(6_500))
    run = await create_run(agents, workflow="workflows/echo", input={"message": message})
    events = await collect(agents, run.name, timeout=120)
    assert types(events)[-1] == "run.completed"
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["message"] == message
    output = data(events, "run.completed")[0]["output"]
    assert output["truncated"] is True and output["see"] == f"GetRun {run.name}"
    assert message.startswith(output["preview"].removeprefix('{"message": "')[:1000])
    started = data(events, "workflow.started")[0]
    assert started["input"]["truncated"] is True
