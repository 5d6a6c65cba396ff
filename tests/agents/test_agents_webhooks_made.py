"""Webhooks of runs made other ways than CreateRun (RerunRun, ForkRun: each takes its own, the
source's is not carried over), and of a run rolled back on a busy thread (multitask rollback):
its row is deleted, yet the receiver it asked for is told, naming it rolled back — once, also
for a run that waited behind it (QA finding 3) — and a run deleted with its thread before it
ended is told CANCELLED, never QUEUED. A real local HTTP receiver (`webhook_receiver`), real
workers, PostgreSQL and NATS."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
from agents_helpers import S, create_run, rpc_error, wait_status
from test_agents_multitask import LONG, SLOW, chat, first_token
from test_agents_webhooks import told
from webhook_receiver import receiving

from amelia_common.db import libpq_url
from amelia_common.settings import Settings

MEDIUM = " ".join(f"word{i}" for i in range(80))  # 8 s at 100 ms a token


async def test_a_rerun_and_a_fork_are_posted_to_their_own_webhook_only(agents) -> None:
    async with receiving() as source_hook, receiving() as own_hook:
        source = await create_run(
            agents, workflow="workflows/echo", input={"message": "again"}, webhook=source_hook.url
        )
        await source_hook.wait_for(1)
        rerun = (
            await agents.RerunRun(S.RerunRunRequest(name=source.name, webhook=own_hook.url))
        ).run
        steps = (await agents.ListRunSteps(S.ListRunStepsRequest(parent=source.name))).steps
        fork = (
            await agents.ForkRun(
                S.ForkRunRequest(
                    name=source.name, checkpoint=steps[0].checkpoint, webhook=own_hook.url
                )
            )
        ).run
        plain = (await agents.RerunRun(S.RerunRunRequest(name=source.name))).run
        await wait_status(agents, plain.name, S.RUN_STATUS_COMPLETED)
        hooks = await own_hook.wait_for(2)
        for run in (rerun, fork):
            await told(agents, run.name, "run.webhook.delivered")
        assert rerun.webhook == own_hook.url and fork.webhook == own_hook.url
        assert plain.webhook == ""
        assert {h.headers["x-amelia-run"] for h in hooks} == {rerun.name, fork.name}
        assert all(h.body["status"] == "RUN_STATUS_COMPLETED" for h in hooks)
        # The source's receiver heard of the source only; the plain rerun told no one.
        assert [h.body["name"] for h in source_hook.received] == [source.name]
        assert len(own_hook.received) == 2
    for request in (
        S.RerunRunRequest(name=source.name, webhook="file:///etc/passwd"),
        S.ForkRunRequest(name=source.name, checkpoint=steps[0].checkpoint, webhook="ftp://x/"),
        S.RerunRunRequest(name=source.name, webhook="http://x/\x00"),
    ):
        call = agents.RerunRun if isinstance(request, S.RerunRunRequest) else agents.ForkRun
        error = await rpc_error(call(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith(
            ("webhook must be an http or https URL", "webhook must not contain NUL characters")
        ), error.details()


async def test_a_rolled_back_run_is_posted_as_rolled_back_after_its_row_is_deleted(
    agents,
) -> None:
    async with receiving() as receiver:
        first = await create_run(
            agents,
            workflow="workflows/chat",
            input={"message": LONG, "model": SLOW},
            webhook=receiver.url,
        )
        await first_token(agents, first.name)
        second = await chat(agents, first.thread, "instead", SLOW, "rollback")
        await wait_status(agents, second.name, S.RUN_STATUS_COMPLETED)
        gone = await rpc_error(agents.GetRun(S.GetRunRequest(name=first.name)))
        assert gone.code() == grpc.StatusCode.NOT_FOUND
        await receiver.wait_until(
            lambda: any(h.headers.get("x-amelia-run-deleted") == "true" for h in receiver.received)
        )
    hooks = receiver.received
    # Delivered from its copy only (the live claim skips a rolled back run); at least once
    # across a crash, and every delivery names the run and its rollback.
    assert {h.headers["x-amelia-run"] for h in hooks} == {first.name}
    assert {h.headers["x-amelia-delivery"] for h in hooks} == {f"{first.name[5:]}:end"}
    for hook in hooks:
        assert hook.body["name"] == first.name
        assert hook.body["status"] == "RUN_STATUS_CANCELLED"
        assert hook.body["error"] == f"rolled back by {second.name} (multitask_strategy rollback)"


async def settled(settings: Settings, names: list[str]) -> None:
    """Once the deleted runs' deliveries are settled (their copies gone: none is made again)."""
    db = await asyncpg.connect(libpq_url(settings.DATABASE_URL))
    try:
        async with asyncio.timeout(60):
            while True:
                owed = await db.fetchval(
                    "SELECT count(*) FROM deleted_run_webhooks WHERE run_id = ANY($1::uuid[])",
                    [name.split("/")[-1] for name in names],
                )
                if not owed:
                    return
                await asyncio.sleep(0.1)
    finally:
        await db.close()


async def test_a_rollback_tells_the_stopped_run_and_the_one_waiting_behind_it_once_each(
    agents, agents_settings: Settings
) -> None:
    """QA finding 3: R1 running (webhook A), R2 enqueued behind it (webhook B), R3 rollback:
    both are stopped and deleted; each receiver hears of its run once, rolled back by R3."""
    async with receiving() as hook_a, receiving() as hook_b:
        first = await create_run(
            agents,
            workflow="workflows/chat",
            input={"message": LONG, "model": SLOW},
            webhook=hook_a.url,
        )
        await first_token(agents, first.name)
        second = await create_run(
            agents,
            workflow="workflows/chat",
            thread=first.thread,
            input={"message": "behind", "model": SLOW},
            multitask_strategy="enqueue",
            webhook=hook_b.url,
        )
        third = await chat(agents, first.thread, "instead", SLOW, "rollback")
        await wait_status(agents, third.name, S.RUN_STATUS_COMPLETED)
        await hook_a.wait_for(1)
        await hook_b.wait_for(1)
        for run in (first, second):
            gone = await rpc_error(agents.GetRun(S.GetRunRequest(name=run.name)))
            assert gone.code() == grpc.StatusCode.NOT_FOUND
        await settled(agents_settings, [first.name, second.name])
    for hook, run in ((hook_a, first), (hook_b, second)):
        assert len(hook.received) == 1, [h.body["name"] for h in hook.received]
        (one,) = hook.received
        assert one.headers["x-amelia-run"] == run.name
        assert one.headers["x-amelia-run-deleted"] == "true"
        assert one.body["status"] == "RUN_STATUS_CANCELLED"
        assert one.body["error"] == f"rolled back by {third.name} (multitask_strategy rollback)"


async def test_a_run_deleted_with_its_thread_before_it_ended_is_posted_cancelled(
    agents, agents_settings: Settings
) -> None:
    """DeleteThread refuses a thread with active runs, but a CreateRun committed between its
    check and its delete is deleted with the thread: arranged here by deleting the thread's row
    while a run waits on it (QUEUED behind a running one). Its receiver is told it ended."""
    async with receiving() as receiver:
        first = await create_run(
            agents, workflow="workflows/chat", input={"message": MEDIUM, "model": SLOW}
        )
        await first_token(agents, first.name)
        waiting = await create_run(
            agents,
            workflow="workflows/chat",
            thread=first.thread,
            input={"message": "behind", "model": SLOW},
            multitask_strategy="enqueue",
            webhook=receiver.url,
        )
        assert waiting.status == S.RUN_STATUS_QUEUED
        db = await asyncpg.connect(libpq_url(agents_settings.DATABASE_URL))
        try:
            await db.execute("DELETE FROM threads WHERE id = $1", first.thread.split("/")[-1])
        finally:
            await db.close()
        (hook,) = await receiver.wait_for(1)
    assert hook.headers["x-amelia-run"] == waiting.name
    assert hook.headers["x-amelia-run-deleted"] == "true"
    assert hook.body["name"] == waiting.name
    assert hook.body["status"] == "RUN_STATUS_CANCELLED"
    assert hook.body["error"] == "deleted with its thread"
    assert hook.body["endTime"]
