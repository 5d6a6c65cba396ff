"""`plan`: discovery → design → (approval) → planning, each step's output feeding the next;
the pause for approval, approval, rejection, an unclear answer; and SIGKILLed workers (real
`python -m amelia_agents.worker` processes) while paused and in the middle of design."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, TypeAlias

from agents_fake_llm import FakeAnthropic
from agents_helpers import S, WorkerProcess, collect, create_run, data, types, wait_status
from google.protobuf import json_format, struct_pb2

from amelia.v1 import agents_pb2_grpc

Stub: TypeAlias = agents_pb2_grpc.AgentServiceStub
REQUEST = "Add a dark theme to the dashboard"


def step_models(prefix: str = "transcript") -> dict[str, str]:
    """A distinct fake model per step (each replies with the conversation it was sent), so the
    fake server's log tells which step called, and how often."""
    key = uuid.uuid4().hex[:8]
    return {
        step: f"anthropic:{prefix}-{step}-{key}" for step in ("discovery", "design", "planning")
    }


def calls(fake: FakeAnthropic, model: str) -> list[dict[str, Any]]:
    name = model.removeprefix("anthropic:")
    return [r["body"] for r in fake.requests if r["body"]["model"] == name]


def answer(value: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    json_format.ParseDict(value, out)
    return out


async def resume(stub: Stub, name: str, value: Any) -> S.Run:
    return (await stub.ResumeRun(S.ResumeRunRequest(name=name, answer=answer(value)))).run


async def start_plan(stub: Stub, models: dict[str, str]) -> S.Run:
    return await create_run(
        stub, workflow="workflows/plan", input={"message": REQUEST, "models": models}
    )


async def paused_plan(stub: Stub) -> tuple[dict[str, str], S.Run]:
    """A plan (models of its own, `step_models`) paused for approval: its models, the run."""
    models = step_models()
    run = await start_plan(stub, models)
    return models, await wait_status(stub, run.name, S.RUN_STATUS_PAUSED)


async def test_each_step_feeds_the_next_and_the_run_waits_for_approval(
    agents: Stub, fake_anthropic: FakeAnthropic
) -> None:
    models, run = await paused_plan(agents)

    [discovery] = calls(fake_anthropic, models["discovery"])
    assert discovery["messages"] == [{"role": "user", "content": REQUEST}]
    assert "Discovery step" in discovery["system"]
    discovery_notes = f"user: {REQUEST}"  # what the transcript model answered
    [design] = calls(fake_anthropic, models["design"])
    assert "Design step" in design["system"]
    assert f"Discovery notes:\n{discovery_notes}" in design["messages"][0]["content"]
    assert not calls(fake_anthropic, models["planning"]), "planning ran before the approval"

    # The question, through GetRun and through the event stream.
    question = json_format.MessageToDict(run.interrupt)
    assert question["node"] == "approval"
    value = question["value"]
    assert value["question"].startswith("Approve this design")
    assert value["options"] == ["approve", "reject"]
    assert discovery_notes in value["design"]
    events = await asyncio.wait_for(_until(agents, run.name, "run.interrupted"), 30)
    [interrupted] = data(events, "run.interrupted")
    assert interrupted["node"] == "approval" and interrupted["value"] == value
    assert [d["node"] for d in data(events, "run.node.started")] == [
        "discovery",
        "design",
        "approval",
    ]

    await resume(agents, run.name, {"approved": True, "feedback": "keep the contrast high"})
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    [planning] = calls(fake_anthropic, models["planning"])
    prompt = planning["messages"][0]["content"]
    assert "Planning step" in planning["system"]
    assert f"Approved design:\n{value['design']}" in prompt
    assert "Reviewer feedback:\nkeep the contrast high" in prompt
    output = json_format.MessageToDict(done.output)
    assert output["status"] == "approved"
    assert output["discovery"] == discovery_notes
    assert output["design"] == value["design"]
    assert output["plan"] == output["message"] == f"user: {prompt}"
    assert output["feedback"] == "keep the contrast high"
    events = await collect(agents, run.name)
    assert types(events)[-1] == "run.completed"
    [progress] = data(events, "workflow.progress")
    assert progress["decision"] == "approved"


async def _until(stub: Stub, name: str, event_type: str) -> list[Any]:
    out = []
    async for reply in stub.StreamRun(S.StreamRunRequest(name=name)):
        out.append(reply.event)
        if reply.event.type == event_type:
            return out
    raise AssertionError(f"the stream ended without {event_type}")


async def test_a_rejection_ends_the_run_with_the_reason(
    agents: Stub, fake_anthropic: FakeAnthropic
) -> None:
    models, run = await paused_plan(agents)
    await resume(agents, run.name, "no, it needs a user study first")
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    output = json_format.MessageToDict(done.output)
    assert output["status"] == "rejected"
    assert output["reason"] == "it needs a user study first"
    assert output["message"] == "Plan rejected: it needs a user study first"
    assert output["design"] and "plan" not in output
    assert not calls(fake_anthropic, models["planning"])
    events = await collect(agents, run.name)
    assert "planning" not in [d["node"] for d in data(events, "run.node.started")]
    [progress] = data(events, "workflow.progress")
    assert progress["decision"] == "rejected"
    assert progress["reason"] == "it needs a user study first"


async def test_an_unclear_answer_is_asked_again(
    agents: Stub, fake_anthropic: FakeAnthropic
) -> None:
    models, run = await paused_plan(agents)
    await resume(agents, run.name, "hmm, maybe")
    again = await _wait_attempt_paused(agents, run.name)
    note = json_format.MessageToDict(again.interrupt)["value"]["note"]
    assert "'hmm, maybe' is neither an approval nor a rejection" in note
    await resume(agents, run.name, "approve")
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["status"] == "approved"
    assert len(calls(fake_anthropic, models["planning"])) == 1


async def _wait_attempt_paused(stub: Stub, name: str) -> S.Run:
    """Paused again after a resume (the note of the new question is set)."""
    for _ in range(600):
        run = (await stub.GetRun(S.GetRunRequest(name=name))).run
        if run.status == S.RUN_STATUS_PAUSED and "note" in run.interrupt.value.struct_value:
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} did not ask again")


# Durability ---------------------------------------------------------------------------------


async def _wait_calls(fake: FakeAnthropic, model: str, count: int) -> None:
    for _ in range(1200):
        if len(calls(fake, model)) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model} was not called {count} times")


async def test_sigkill_of_the_worker_while_paused_or_mid_design_loses_nothing(
    durable_api: Stub, start_worker: Callable[[str], WorkerProcess], fake_anthropic: FakeAnthropic
) -> None:
    """One worker runs plan A to its pause and plan B into its design call (held open by the
    fake model), and is SIGKILLed. A second worker finishes both: A's steps are not run again,
    B re-runs only design."""
    api = durable_api
    key = uuid.uuid4().hex[:8]
    first = start_worker("worker1")
    try:
        await first.ready()
        models_a = step_models()
        run_a = await start_plan(api, models_a)
        paused_a = await wait_status(api, run_a.name, S.RUN_STATUS_PAUSED, timeout=60)

        models_b = {**step_models(), "design": f"anthropic:hold-{key}"}
        run_b = await start_plan(api, models_b)
        stream_b = asyncio.create_task(collect(api, run_b.name, timeout=120))
        await _wait_calls(fake_anthropic, models_b["design"], 1)  # design is mid-stream

        await start_worker("worker2").ready()
        first.kill()
        fake_anthropic.release(key)

        # B: redelivered to the second worker, which re-runs design only, and pauses.
        paused_b = await wait_status(api, run_b.name, S.RUN_STATUS_PAUSED, timeout=60)
        assert paused_b.attempt == 2
        assert len(calls(fake_anthropic, models_b["discovery"])) == 1
        assert len(calls(fake_anthropic, models_b["design"])) == 2
        design_b = json_format.MessageToDict(paused_b.interrupt)["value"]["design"]
        assert f"user: {REQUEST}" in design_b  # discovery's checkpointed notes reached design

        # A: its worker died while it waited; the answer resumes it on the second worker.
        await resume(api, run_a.name, "approve")
        await resume(api, run_b.name, True)
        done_a = await wait_status(api, run_a.name, S.RUN_STATUS_COMPLETED, timeout=60)
        done_b = await wait_status(api, run_b.name, S.RUN_STATUS_COMPLETED, timeout=60)
        for models in (models_a, models_b):
            assert len(calls(fake_anthropic, models["discovery"])) == 1
            assert len(calls(fake_anthropic, models["planning"])) == 1
        assert len(calls(fake_anthropic, models_a["design"])) == 1
        assert (
            done_a.output["design"]
            == json_format.MessageToDict(paused_a.interrupt)["value"]["design"]
        )
        assert done_a.output["status"] == done_b.output["status"] == "approved"
        assert done_b.output["design"] == design_b

        events_b = await asyncio.wait_for(stream_b, 60)
        assert types(events_b)[-1] == "run.completed"
        started = [(d["node"], d["attempt"]) for d in data(events_b, "run.node.started")]
        assert started == [
            ("discovery", 1),
            ("design", 1),
            ("design", 2),
            ("approval", 2),
            ("approval", 3),
            ("planning", 3),
        ]
        resumed = [d["reason"] for d in data(events_b, "run.resumed")]
        assert resumed == ["redelivered", "answer"]
        assert [e.sequence for e in events_b] == sorted({e.sequence for e in events_b})
        events_a = await collect(api, run_a.name)
        assert [d["node"] for d in data(events_a, "run.node.started")] == [
            "discovery",
            "design",
            "approval",
            "approval",
            "planning",
        ]
    finally:
        fake_anthropic.release(key)
