"""Runs end to end: streaming, providers, failures, cancel, human in the loop, thread memory."""

from __future__ import annotations

from agents_helpers import S, collect, create_run, data, tokens, types, wait_status


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

    no_key = agents_settings.model_copy(update={"ANTHROPIC_API_KEY": type(
        agents_settings.ANTHROPIC_API_KEY)("")})
    try:
        get_model("anthropic:claude-sonnet-4-5", no_key)
    except ProviderConfigError as exc:
        assert "ANTHROPIC_API_KEY" in str(exc)
    else:
        raise AssertionError("no error without ANTHROPIC_API_KEY")


async def test_timeout_fails_the_run_with_timeout(agents) -> None:
    run = await create_run(
        agents, workflow="workflows/test-sleep", input={"seconds": 60}, timeout=1
    )
    events = await collect(agents, run.name)
    assert types(events)[-2:] == ["workflow.failed", "run.failed"]
    failed = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    assert failed.error.startswith("timeout")
    assert data(events, "run.failed")[0]["error"] == failed.error


async def test_an_exception_fails_the_run_with_its_message(agents) -> None:
    run = await create_run(agents, workflow="workflows/test-raise", input={})
    events = await collect(agents, run.name)
    assert types(events)[-2:] == ["workflow.failed", "run.failed"]
    failed = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    assert failed.error == "ValueError: boom in node"
    finished = data(events, "run.node.finished")
    assert finished and "boom in node" in finished[-1]["error"]
