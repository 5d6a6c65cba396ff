"""Webhooks of runs made other ways than CreateRun (RerunRun, ForkRun: each takes its own, the
source's is not carried over), and of a run rolled back on a busy thread (multitask rollback):
its row is deleted, yet the receiver it asked for is told, naming it rolled back. A real local
HTTP receiver (`webhook_receiver`), real workers, PostgreSQL and NATS."""

from __future__ import annotations

import grpc
from agents_helpers import S, create_run, rpc_error, wait_status
from test_agents_multitask import LONG, SLOW, chat, first_token
from test_agents_webhooks import told
from webhook_receiver import receiving


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
    ):
        call = agents.RerunRun if isinstance(request, S.RerunRunRequest) else agents.ForkRun
        error = await rpc_error(call(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("webhook must be an http or https URL")


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
    # At least once: a delivery may also have been made in the moment between the stopped
    # run's end and its deletion; every one names the run and its rollback.
    assert {h.headers["x-amelia-run"] for h in hooks} == {first.name}
    assert {h.headers["x-amelia-delivery"] for h in hooks} == {f"{first.name[5:]}:end"}
    for hook in hooks:
        assert hook.body["name"] == first.name
        assert hook.body["status"] == "RUN_STATUS_CANCELLED"
        assert hook.body["error"] == f"rolled back by {second.name} (multitask_strategy rollback)"
