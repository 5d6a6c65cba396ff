"""`POST /v1/runs/{run}:wait` (WaitRun) and a run's `webhook` through the gateway and the real
mesh: the wait answers the ended run with its output; a wait longer than the gateway's usual
deadline (GATEWAY_TIMEOUT_SECONDS) is not cut by it; a wait that runs out is a 504 saying the
run goes on, and says the client's whole wait when the agents service restarted under it; a
webhook that is not an http(s) URL is a 400 naming the field."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_helpers import Mesh, start_gateway
from service_process import until_connected
from webhook_receiver import receiving

from amelia_agents.server import build_service as build_agents
from amelia_common.embedded import free_port
from amelia_common.grpc_client import UNREACHED_SECONDS

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
                "after 1.5 s of waiting (the run goes on; wait again, or follow it with"
                " GET /v1/runs/{id}:stream (or a run subscription on /ws))"
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


# Seconds the agents service is down when it restarts: none (gRPC's own retries resend the wait
# as it was), or longer than those retries last (about 1.5 s): the gateway and the CLI send it
# again (reissue_while_unavailable) once gRPC's reconnect backoff (1 s, then 1.6 times longer
# each time) finds the service back.
OUTAGES = {"quick": 0.0, "slow": 2.0}


@pytest.mark.slow
@pytest.mark.parametrize("outage", OUTAGES)
async def test_a_wait_across_a_restart_is_one_wait_of_the_callers_length(
    outage: str, infra: Any, events_address: str, tmp_path: Path
) -> None:
    """QA F6: the agents service restarts under a `:wait` and an `amelia runs wait`; each goes
    on, runs out when its caller's timeout does (not a whole timeout after the restart) and
    says how long its caller waited in all (not only since the restart). The service has its
    own run queue and no workers: the run stays QUEUED."""
    port = free_port()
    settings = infra.settings(
        EVENTS_ADDRESS=events_address,
        AGENTS_GRPC_PORT=port,
        AGENT_WORKERS=0,
        RUNS_QUEUE_STREAM=f"AMELIA_RUNS_WAIT_{uuid.uuid4().hex[:8]}",
    )
    agents = await build_agents(settings)
    await agents.start()
    gateway = await start_gateway(
        infra.settings(EVENTS_ADDRESS=events_address, AGENTS_ADDRESS=f"127.0.0.1:{port}")
    )
    timeout = UNREACHED_SECONDS + 12  # the service is back well before the wait runs out
    cli: asyncio.subprocess.Process | None = None
    loop = asyncio.get_running_loop()
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
            name = (await _run(http, "never taken"))["name"]
            http_sent = loop.time()
            http_wait = asyncio.ensure_future(
                http.post(f"/v1/{name}:wait", json={"timeout": f"{timeout}s"})
            )
            cli = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "amelia_cli", "runs", "wait", name),
                *("--timeout", str(timeout)),
                env={
                    # gRPC's settings as the CLI makes them itself (not this process's).
                    **{k: v for k, v in os.environ.items() if not k.startswith("GRPC_")},
                    "AGENTS_ADDRESS": f"127.0.0.1:{port}",
                    "AMELIA_DATA_DIR": str(tmp_path / "cli"),
                    "COLUMNS": "200",
                },
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            # Both waits have reached the service and waited there longer than a call to a
            # service that is down takes to fail (UNREACHED_SECONDS) when it restarts.
            await until_connected(cli.pid, port)
            cli_waiting = loop.time()
            await asyncio.sleep(UNREACHED_SECONDS + 0.5)
            assert not http_wait.done()
            await agents.stop(0)
            await asyncio.sleep(OUTAGES[outage])
            agents = await build_agents(settings)
            await agents.start()
            reply = await http_wait
            http_took = loop.time() - http_sent
            out, errors = await asyncio.wait_for(cli.communicate(), timeout=60)
            cli_took = loop.time() - cli_waiting
    finally:
        if cli is not None and cli.returncode is None:
            cli.kill()
            await cli.wait()
        await gateway.stop()
        await agents.stop(0)
    assert reply.status_code == 504, reply.text
    message = reply.json()["message"]
    assert waited_seconds(message, name) == pytest.approx(timeout, abs=0.5), message
    assert cli.returncode == 1, (out, errors)
    (said,) = errors.decode().splitlines()  # one line: none of gRPC's own (a GOAWAY's)
    assert said.startswith("DEADLINE_EXCEEDED: "), errors
    # The CLI names the command that follows a run, not the RPC (`client.in_cli_words`).
    cli_said = said.removeprefix("DEADLINE_EXCEEDED: ")
    assert waited_seconds(cli_said, name, "`amelia runs show -f`") == pytest.approx(
        timeout, abs=0.5
    ), said
    # A whole timeout after the restart would be more than UNREACHED_SECONDS later than these.
    assert http_took < timeout + UNREACHED_SECONDS, http_took
    assert cli_took < timeout + UNREACHED_SECONDS, cli_took


def waited_seconds(
    message: str, name: str, follow: str = "GET /v1/runs/{id}:stream (or a run subscription on /ws)"
) -> float:
    """The seconds a timeout's message says the caller waited (`follow`: how it says to follow
    the run: the gateway's route, or the CLI's command for it)."""
    found = re.fullmatch(
        rf"{name} is still QUEUED after ([0-9.]+) s of waiting \(the run goes on; wait again, "
        rf"or follow it with {re.escape(follow)}\)",
        message,
    )
    assert found, message
    return float(found.group(1))
