"""A run's webhook is called when the run pauses on a question, then when it ends.

LangGraph Server calls a run's webhook when the run finishes, and its run that stops on an
interrupt has finished there; an Amelia run that pauses is the same run when answered, so its
receiver hears of each pause (the Run PAUSED with its question) and of the end. A real local
HTTP server receives them (`webhook_receiver`)."""

from __future__ import annotations

import asyncio
from typing import Any

from agents_helpers import S, collect, create_run, data, wait_status
from webhook_receiver import receiving

from amelia_agents import webhooks

FINISHED = (S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED, S.RUN_STATUS_CANCELLED)


async def answer(stub: Any, name: str, text: str) -> None:
    request = S.ResumeRunRequest(name=name)
    request.answer.string_value = text
    await stub.ResumeRun(request, timeout=60)


async def told(stub: Any, name: str, event_type: str, count: int) -> list[dict[str, Any]]:
    """The run's first `count` `event_type` events' data, once they are in its log."""
    async with asyncio.timeout(60):
        while True:
            found = data(await collect(stub, name), event_type)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.1)


async def test_a_paused_run_is_posted_with_its_question_then_again_when_it_ends(agents) -> None:
    async with receiving() as receiver:
        run = await create_run(
            agents, workflow="workflows/test-ask", input={"question": "Go?"}, webhook=receiver.url
        )
        (paused,) = await receiver.wait_for(1)
        await answer(agents, run.name, "yes")
        done = await wait_status(agents, run.name, *FINISHED, timeout=60)
        hooks = await receiver.wait_for(2)
        delivered = await told(agents, run.name, "run.webhook.delivered", 2)
        events = await collect(agents, run.name)
    rid = run.name.removeprefix("runs/")
    (question,) = [e for e in events if e.type == "run.interrupted"]
    assert paused.body["status"] == "RUN_STATUS_PAUSED"
    assert paused.body["interrupt"]["node"] == "ask"
    assert paused.body["interrupt"]["value"] == {"question": "Go?"}
    assert paused.headers["x-amelia-delivery"] == question.id
    assert question.id.startswith(f"{rid}:interrupt:")
    assert paused.headers["x-amelia-attempt"] == "1"
    assert S.RunStatus.Name(done.status) == "RUN_STATUS_COMPLETED"
    assert hooks[1].body["status"] == "RUN_STATUS_COMPLETED"
    assert hooks[1].body["output"]["result"] == "answer was yes"
    assert hooks[1].headers["x-amelia-delivery"] == f"{rid}:end"
    assert hooks[1].headers["x-amelia-attempt"] == "1"
    assert [d["delivery"] for d in delivered] == [question.id, f"{rid}:end"]
    # Each delivery after the event it tells of, in the run's log.
    kinds = [e.type for e in events]
    assert kinds.index("run.interrupted") < kinds.index("run.webhook.delivered")
    told_at = [i for i, kind in enumerate(kinds) if kind == "run.webhook.delivered"]
    assert kinds.index("run.interrupted") < told_at[0]
    assert kinds.index("run.completed") < told_at[1]
    assert len(receiver.received) == 2


async def test_a_pause_answered_while_its_delivery_fails_is_not_posted_again(agents) -> None:
    """The receiver's first answer (500) is held until the question has been answered: the
    pause it would have retried is over, so the next POST is the run's end, its first attempt."""
    async with receiving(500) as receiver:
        receiver.answer_after = asyncio.Event()
        run = await create_run(
            agents, workflow="workflows/test-ask", input={"question": "Go?"}, webhook=receiver.url
        )
        await receiver.wait_for(1)
        await answer(agents, run.name, "yes")
        receiver.answer_after.set()
        await wait_status(agents, run.name, *FINISHED, timeout=60)
        hooks = await receiver.wait_for(2)
        (end,) = await told(agents, run.name, "run.webhook.delivered", 1)
        # Nothing more comes after the end's delivery was told.
        await asyncio.sleep(webhooks.BACKOFF_SECONDS[0] + 2 * webhooks.POLL_SECONDS)
    rid = run.name.removeprefix("runs/")
    assert hooks[0].body["status"] == "RUN_STATUS_PAUSED" and hooks[0].answered == 500
    assert hooks[1].body["status"] == "RUN_STATUS_COMPLETED"
    assert hooks[1].headers["x-amelia-delivery"] == f"{rid}:end"
    assert hooks[1].headers["x-amelia-attempt"] == "1"
    assert end["delivery"] == f"{rid}:end" and end["attempts"] == 1
    assert len(receiver.received) == 2


async def test_each_pause_of_a_run_is_posted_once(agents) -> None:
    """Two questions, a failing first try on the second: each pause is its own delivery with
    its own attempts, and the end's attempts start again at 1."""
    async with receiving(200, 503) as receiver:
        run = await create_run(
            agents, workflow="workflows/test-ask-twice", input={}, webhook=receiver.url
        )
        await receiver.wait_for(1)
        await answer(agents, run.name, "a")
        await receiver.wait_for(3)
        await answer(agents, run.name, "b")
        done = await wait_status(agents, run.name, *FINISHED, timeout=60)
        hooks = await receiver.wait_for(4)
        delivered = await told(agents, run.name, "run.webhook.delivered", 3)
    deliveries = [h.headers["x-amelia-delivery"] for h in hooks]
    attempts = [h.headers["x-amelia-attempt"] for h in hooks]
    assert [h.body["status"] for h in hooks] == ["RUN_STATUS_PAUSED"] * 3 + ["RUN_STATUS_COMPLETED"]
    assert [h.body["interrupt"]["value"] for h in hooks[:3]] == [
        {"question": "first?"},
        {"question": "second?"},
        {"question": "second?"},
    ]
    assert deliveries[1] == deliveries[2] != deliveries[0]
    assert attempts == ["1", "1", "2", "1"]
    assert [d["delivery"] for d in delivered] == [deliveries[0], deliveries[2], deliveries[3]]
    assert done.output["result"] == "a,b"
