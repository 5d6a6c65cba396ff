"""`POST /v1/runs/{run}:wait` (WaitRun) and a run's `webhook` through the gateway and the real
mesh: the wait answers the ended run with its output; a wait longer than the gateway's usual
deadline (GATEWAY_TIMEOUT_SECONDS) is not cut by it; a wait that runs out is a 504 saying the
run goes on; a webhook that is not an http(s) URL is a 400 naming the field."""

from __future__ import annotations

from typing import Any

import httpx
from gateway_helpers import Mesh, start_gateway
from webhook_receiver import receiving

SLOW = "offline:echo?delay_ms=100"  # 30 s for 300 words: cancelled long before


async def _run(http: httpx.AsyncClient, message: str, **fields: Any) -> dict[str, Any]:
    reply = await http.post(
        "/v1/runs",
        json={"run": {"workflow": "workflows/echo", "input": {"message": message}, **fields}},
    )
    assert reply.status_code == 200, reply.text
    run: dict[str, Any] = reply.json()["run"]
    return run


async def test_wait_answers_the_ended_run_with_its_output(mesh: Mesh) -> None:
    run = await _run(mesh.http, "wait for me")
    reply = await mesh.http.post(f"/v1/{run['name']}:wait", json={})
    assert reply.status_code == 200, reply.text
    done = reply.json()["run"]
    assert done["status"] == "RUN_STATUS_COMPLETED"
    assert done["output"] == {"message": "wait for me"}


async def test_a_wait_outlasts_the_gateways_usual_deadline_and_runs_out_in_words(
    mesh: Mesh, infra: Any, events_address: str
) -> None:
    settings = infra.settings(
        EVENTS_ADDRESS=events_address,
        AGENTS_ADDRESS=f"127.0.0.1:{mesh.agents.bound_port}",
        GATEWAY_TIMEOUT_SECONDS=0.5,
    )
    gateway = await start_gateway(settings)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
            agent = (
                await http.post(
                    "/v1/agents", params={"agentId": "wait-slow"}, json={"agent": {"model": SLOW}}
                )
            ).json()["agent"]["name"]
            created = await http.post(
                "/v1/runs", json={"run": {"agent": agent, "input": {"message": "word " * 300}}}
            )
            name = created.json()["run"]["name"]
            # 1.5 s: three times the gateway's usual deadline; the run takes 30 s.
            reply = await http.post(f"/v1/{name}:wait", json={"timeout": "1.5s"})
            assert reply.status_code == 504, reply.text
            status = reply.json()
            assert status["code"] == 4  # DEADLINE_EXCEEDED
            assert status["message"].startswith(f"{name} is still ")
            assert status["message"].endswith(
                "after 1.5 s of waiting (the run goes on; wait again, or follow it with StreamRun)"
            )
            await http.post(f"/v1/{name}:cancel", json={})
    finally:
        await gateway.stop()


async def test_a_webhook_that_is_not_http_is_a_400_naming_the_field(mesh: Mesh) -> None:
    reply = await mesh.http.post(
        "/v1/runs",
        json={
            "run": {
                "workflow": "workflows/echo",
                "input": {"message": "x"},
                "webhook": "file:///etc/passwd",
            }
        },
    )
    assert reply.status_code == 400, reply.text
    status = reply.json()
    assert status["code"] == 3
    assert status["message"] == (
        "run.webhook must be an http or https URL with a host, like "
        "'https://example.com/hooks/run', got 'file:///etc/passwd'"
    )
    run = await _run(mesh.http, "hooked", webhook="http://127.0.0.1:9/hook")
    assert run["webhook"] == "http://127.0.0.1:9/hook"


async def test_a_crons_and_a_reruns_webhooks_over_http(mesh: Mesh) -> None:
    """`webhook` on `POST /v1/crons` (every run the cron makes) and on `:rerun`: each run is
    POSTed to a real local receiver; a cron's bad webhook is a 400 naming `cron.webhook`."""
    http = mesh.http
    bad = await http.post(
        "/v1/crons",
        json={
            "cron": {"workflow": "workflows/echo", "schedule": "0 0 1 1 *", "webhook": "ftp://x/"}
        },
    )
    assert bad.status_code == 400, bad.text
    assert bad.json()["message"].startswith("cron.webhook must be an http or https URL")
    async with receiving() as receiver:
        created = await http.post(
            "/v1/crons",
            json={
                "cron": {
                    "workflow": "workflows/echo",
                    "schedule": "0 0 1 1 *",  # yearly: only the trigger below runs it
                    "input": {"message": "from the cron"},
                    "webhook": receiver.url,
                }
            },
        )
        assert created.status_code == 200, created.text
        cron = created.json()["cron"]
        assert cron["webhook"] == receiver.url
        try:
            triggered = await http.post(f"/v1/{cron['name']}:trigger", json={})
            assert triggered.status_code == 200, triggered.text
            fired = triggered.json()["run"]
            assert fired["webhook"] == receiver.url
            rerun = await http.post(f"/v1/{fired['name']}:rerun", json={"webhook": receiver.url})
            assert rerun.status_code == 200, rerun.text
            again = rerun.json()["run"]
            hooks = await receiver.wait_for(2)
        finally:
            await http.delete(f"/v1/{cron['name']}")
    assert {h.body["name"] for h in hooks} == {fired["name"], again["name"]}
    assert all(h.body["output"] == {"message": "from the cron"} for h in hooks)
