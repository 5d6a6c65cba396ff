"""Run webhooks (LangGraph's `webhook` on a run): the run's JSON POSTed once it ends to a real
local HTTP server (`webhook_receiver`), retried with backoff when the receiver fails, given up
after MAX_ATTEMPTS with `run.webhook.failed`; a URL that is not http(s) is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from agents_helpers import S, collect, create_run, data, rpc_error
from webhook_receiver import receiving

from amelia_agents import webhooks


async def told(stub: Any, name: str, event_type: str, timeout: float = 60) -> dict[str, Any]:
    """The run's `event_type` event's data, once it is in the run's log."""
    async with asyncio.timeout(timeout):
        while True:
            found = data(await collect(stub, name), event_type)
            if found:
                return found[0]
            await asyncio.sleep(0.1)


async def test_the_run_is_posted_once_with_its_output_when_it_ends(agents) -> None:
    async with receiving() as receiver:
        run = await create_run(
            agents, workflow="workflows/echo", input={"message": "hi hook"}, webhook=receiver.url
        )
        assert run.webhook == receiver.url
        (hook,) = await receiver.wait_for(1)
        delivered = await told(agents, run.name, "run.webhook.delivered")
        assert len(receiver.received) == 1
    assert hook.path == "/hooks/run"
    assert hook.headers["content-type"] == "application/json"
    assert hook.headers["x-amelia-run"] == run.name
    assert hook.body["name"] == run.name
    assert hook.body["status"] == "RUN_STATUS_COMPLETED"
    assert hook.body["output"] == {"message": "hi hook"}
    assert hook.body["webhook"] == receiver.url
    assert delivered == {
        "run": run.name,
        "attempt": 1,
        "url": receiver.url,
        "attempts": 1,
        "status_code": 200,
        "delivery": f"{run.name.removeprefix('runs/')}:end",
    }
    # Its end came first in the run's log.
    events = await collect(agents, run.name)
    kinds = [e.type for e in events]
    assert kinds.index("run.completed") < kinds.index("run.webhook.delivered")
    got = (await agents.GetRun(S.GetRunRequest(name=run.name))).run
    assert got.webhook == receiver.url


async def test_a_receiver_that_fails_twice_gets_it_on_the_third_attempt(agents) -> None:
    async with receiving(500, 503) as receiver:
        run = await create_run(
            agents, workflow="workflows/test-raise", input={}, webhook=receiver.url
        )
        hooks = await receiver.wait_for(3)
        delivered = await told(agents, run.name, "run.webhook.delivered")
    assert [h.answered for h in hooks] == [500, 503, 200]
    assert [h.headers["x-amelia-attempt"] for h in hooks] == ["1", "2", "3"]
    assert {h.headers["x-amelia-delivery"] for h in hooks} == {f"{run.name[5:]}:end"}
    assert hooks[-1].body["status"] == "RUN_STATUS_FAILED"
    assert hooks[-1].body["error"] == "ValueError: boom in node"
    assert delivered["attempts"] == 3 and delivered["status_code"] == 200


async def test_a_receiver_that_always_fails_is_given_up_after_the_last_attempt(agents) -> None:
    async with receiving(then=500) as receiver:
        run = await create_run(
            agents, workflow="workflows/echo", input={"message": "x"}, webhook=receiver.url
        )
        failed = await told(agents, run.name, "run.webhook.failed", timeout=120)
        assert len(receiver.received) == webhooks.MAX_ATTEMPTS
    assert failed["attempts"] == webhooks.MAX_ATTEMPTS
    assert failed["error"] == "HTTP 500"
    assert failed["url"] == receiver.url


async def test_a_webhook_that_is_not_an_http_url_is_refused(agents) -> None:
    for bad, says in (
        ("ftp://example.com/hook", "must be an http or https URL with a host"),
        ("http://", "must be an http or https URL with a host"),
        ("example.com/hook", "must be an http or https URL with a host"),
        ("http://exa mple.com/", "must be an http or https URL with a host"),
        ("http://example.com:port/", "is not a URL"),
        ("http://example.com/" + "a" * 2048, "characters long; at most 2048"),
        ("http://127.0.0.1:18991/\x00", "must not contain NUL characters"),
    ):
        error = await rpc_error(
            create_run(agents, workflow="workflows/echo", input={"message": "x"}, webhook=bad)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert says in error.details(), (bad, error.details())
        assert error.details().startswith("run.webhook")
