"""Crons over HTTP and gRPC against the real mesh: created, listed by agent and thread, paused,
triggered (the run and a `cron.fired` event on `crons/<id>`), removed; a bad schedule or zone is
a 400 / INVALID_ARGUMENT google.rpc.Status naming the field, a missing agent or thread a 404.

The schedules here are yearly (`0 0 1 1 *`): the mesh's own scheduler never fires them while a
test runs; firing on time is tests/agents/test_agents_crons.py's, on an arranged clock."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import httpx
import pytest
from gateway_helpers import Mesh

from amelia.v1 import crons_pb2, crons_pb2_grpc
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings

YEARLY = "0 0 1 1 *"
SLOW = "offline:echo?delay_ms=100"  # 30 s for 300 words: cancelled long before


async def _agent(http: httpx.AsyncClient) -> str:
    agent_id = f"cron-{uuid.uuid4().hex[:10]}"
    reply = await http.post(
        "/v1/agents", params={"agentId": agent_id}, json={"agent": {"model": "offline:echo"}}
    )
    assert reply.status_code == 200, reply.text
    return f"agents/{agent_id}"


async def test_a_cron_over_http_from_creation_to_removal(mesh: Mesh) -> None:
    http = mesh.http
    agent = await _agent(http)
    created = await http.post(
        "/v1/crons",
        json={"cron": {"agent": agent, "schedule": YEARLY, "input": {"message": "happy new year"}}},
    )
    assert created.status_code == 200, created.text
    cron = created.json()["cron"]
    assert cron["name"].startswith("crons/")
    assert cron["nextRunTime"].endswith("-01-01T00:00:00Z")
    assert (await http.get(f"/v1/{cron['name']}")).json()["cron"] == cron

    thread = (await http.post("/v1/threads", json={"thread": {}})).json()["thread"]["name"]
    on_thread = await http.post(
        f"/v1/{thread}/crons",
        json={"cron": {"agent": agent, "schedule": YEARLY, "input": {"message": "hi"}}},
    )
    assert on_thread.status_code == 200, on_thread.text
    assert on_thread.json()["cron"]["thread"] == thread

    listed = (await http.get("/v1/crons", params={"agent": agent})).json()["crons"]
    assert [c["name"] for c in listed] == [cron["name"], on_thread.json()["cron"]["name"]]
    searched = (await http.post("/v1/crons:search", json={"thread": thread})).json()["crons"]
    assert [c["name"] for c in searched] == [on_thread.json()["cron"]["name"]]

    paused = await http.patch(
        f"/v1/{cron['name']}", params={"updateMask": "paused"}, json={"cron": {"paused": True}}
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["cron"]["paused"] is True
    assert paused.json()["cron"]["nextRunTime"] is None, paused.text

    triggered = await http.post(f"/v1/{cron['name']}:trigger", json={"requestId": "now-1"})
    assert triggered.status_code == 200, triggered.text
    run = triggered.json()["run"]
    assert run["agent"] == agent and run["input"] == {"message": "happy new year"}
    assert triggered.json()["cron"]["lastRun"]["run"] == run["name"]
    events: list[dict[str, object]] = []
    for _ in range(100):  # published after the run was created and the tick recorded
        found = await http.get("/v1/events", params={"filter.subject": cron["name"]})
        events = found.json()["events"]
        if events:
            break
        await asyncio.sleep(0.1)
    assert [e["type"] for e in events] == ["cron.fired"]
    assert events[0]["data"]["run"] == run["name"]

    for made in (cron["name"], on_thread.json()["cron"]["name"]):
        assert (await http.delete(f"/v1/{made}")).status_code == 200
    gone = await http.get(f"/v1/{cron['name']}")
    assert gone.status_code == 404 and gone.json()["code"] == 5
    assert (await http.get(f"/v1/{run['name']}")).status_code == 200  # its run stays


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ({"schedule": "* * * *"}, "cron.schedule '* * * *' must have 5 fields"),
        ({"schedule": "0 25 * * *"}, "cron.schedule '0 25 * * *' is not a valid cron expression"),
        ({"schedule": YEARLY, "timezone": "Nowhere/Land"}, "cron.timezone 'Nowhere/Land'"),
        ({"schedule": YEARLY, "endTime": "2001-01-01T00:00:00Z"}, "cron.end_time"),
        (
            {"schedule": YEARLY, "endTime": "2999-01-01T00:00:00Z", "multitaskStrategy": "x"},
            "cron.multitask_strategy 'x' is not one of: reject, enqueue, interrupt, rollback",
        ),
        (  # no thread: each tick's is new, never busy (LangGraph's stateless crons have none)
            {"schedule": YEARLY, "multitaskStrategy": "interrupt"},
            "cron.multitask_strategy 'interrupt' needs a cron on a thread: without cron.thread",
        ),
    ],
)
async def test_bad_crons_are_400_naming_the_field(
    mesh: Mesh, cron: dict[str, str], words: str
) -> None:
    agent = await _agent(mesh.http)
    cron = {"agent": agent, "input": {"message": "hi"}, **cron}
    reply = await mesh.http.post("/v1/crons", json={"cron": cron})
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["code"] == 3 and words in body["message"], body


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("agent=garbage", "agent name 'garbage' must be 'agents/<id>'"),
        ("thread=garbage", "thread name 'garbage' must be 'threads/<uuid>'"),
        ("workflow=chat", "workflow name 'chat' must be 'workflows/<name>'"),
        ("workflow=workflows/nope", "workflow 'workflows/nope' is not a workflow; available: "),
    ],
)
async def test_bad_list_filters_are_400_not_an_empty_list(
    mesh: Mesh, query: str, words: str
) -> None:
    reply = await mesh.http.get(f"/v1/crons?{query}")
    assert reply.status_code == 400, reply.text
    assert reply.json()["code"] == 3 and words in reply.json()["message"], reply.text


async def test_crons_are_listed_by_workflow(mesh: Mesh) -> None:
    made = await mesh.http.post(
        "/v1/crons",
        json={
            "cron": {"workflow": "workflows/chat", "schedule": YEARLY, "input": {"message": "hi"}}
        },
    )
    assert made.status_code == 200, made.text
    name = made.json()["cron"]["name"]
    listed = (await mesh.http.get("/v1/crons?workflow=workflows/chat&pageSize=1000")).json()
    assert name in [c["name"] for c in listed["crons"]]
    assert {c["workflow"] for c in listed["crons"]} == {"workflows/chat"}
    other = (await mesh.http.get("/v1/crons?workflow=workflows/plan&pageSize=1000")).json()
    assert name not in [c["name"] for c in other.get("crons", [])]
    assert (await mesh.http.delete(f"/v1/{name}")).status_code == 200


async def test_missing_agents_are_404(mesh: Mesh) -> None:
    reply = await mesh.http.post(
        "/v1/crons",
        json={
            "cron": {"agent": "agents/nobody-here", "schedule": YEARLY, "input": {"message": "hi"}}
        },
    )
    assert reply.status_code == 404 and reply.json()["code"] == 5, reply.text
    assert "agents/nobody-here does not exist" in reply.json()["message"]


async def test_bad_crons_over_grpc_are_invalid_argument(mesh: Mesh, infra: object) -> None:
    settings: Settings = infra.settings()  # type: ignore[attr-defined]
    async with aio_channel(f"127.0.0.1:{mesh.agents.bound_port}", settings) as channel:
        stub = crons_pb2_grpc.CronServiceStub(channel)
        cron = crons_pb2.Cron(agent=await _agent(mesh.http), schedule="*/0 * * * *")
        cron.input.update({"message": "hi"})
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateCron(crons_pb2.CreateCronRequest(cron=cron))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cron.schedule '*/0 * * * *'" in (caught.value.details() or "")
        change = crons_pb2.Cron(name=f"crons/{uuid.uuid4()}", paused=True)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UpdateCron(crons_pb2.UpdateCronRequest(cron=change, update_mask=["owner"]))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_cron_on_a_busy_thread_follows_its_multitask_strategy_over_http(
    mesh: Mesh,
) -> None:
    """enqueue: a trigger while the thread's run streams makes a run queued behind it, and the
    action says so; the strategy and `ended` are in the cron's JSON; an unknown strategy and an
    end that has passed or comes before the next tick are 400s naming the field."""
    http = mesh.http
    thread = (await http.post("/v1/threads", json={"thread": {}})).json()["thread"]["name"]
    slow = {"message": " ".join(f"word{i}" for i in range(300)), "model": SLOW}
    created = await http.post(
        f"/v1/{thread}/crons",
        json={
            "cron": {
                "workflow": "workflows/chat",
                "schedule": YEARLY,
                "input": slow,
                "multitaskStrategy": "enqueue",
            }
        },
    )
    assert created.status_code == 200, created.text
    cron = created.json()["cron"]
    assert (cron["multitaskStrategy"], cron["ended"]) == ("enqueue", False)
    first = (await http.post(f"/v1/{cron['name']}:trigger", json={})).json()["run"]
    second = await http.post(f"/v1/{cron['name']}:trigger", json={})
    assert second.status_code == 200, second.text
    queued = second.json()["run"]
    assert (queued["status"], queued["queuedBehind"]) == ("RUN_STATUS_QUEUED", first["name"])
    action = second.json()["cron"]["recentActions"][0]
    assert action["reason"] == f"queued behind {first['name']}", action
    for run in (queued, first):
        assert (await http.post(f"/v1/{run['name']}:cancel", json={})).status_code == 200

    for mask, change, words in (
        ("multitask_strategy", {"multitaskStrategy": "later"}, "'later' is not one of: reject"),
        ("end_time", {"endTime": "2001-01-01T00:00:00Z"}, "cron.end_time 2001-01-01T00:00:00Z"),
    ):
        reply = await http.patch(
            f"/v1/{cron['name']}", params={"updateMask": mask}, json={"cron": change}
        )
        assert reply.status_code == 400 and words in reply.json()["message"], reply.text
    ends = await http.patch(
        f"/v1/{cron['name']}",
        params={"updateMask": "end_time"},
        json={"cron": {"endTime": "2999-01-01T00:00:00Z"}},
    )
    assert ends.status_code == 200 and ends.json()["cron"]["endTime"], ends.text
    assert (await http.delete(f"/v1/{cron['name']}")).status_code == 200
