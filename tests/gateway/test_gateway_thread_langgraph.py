"""LangGraph Server's thread and run calls over HTTP (QA s27b L13): `POST /v1/threads` with a
chosen `threadId` and `ifExists` (409 for an id taken, the thread for "do_nothing"),
`PATCH /v1/threads/{t}` merging metadata, `DELETE /v1/runs/{r}` of an ended run (400
FAILED_PRECONDITION for an active one) — through the gateway to the real agents service, and
in the OpenAPI document."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from gateway_helpers import Mesh

LONG = " ".join(f"word{i}" for i in range(300))


async def wait_run(mesh: Mesh, name: str, *statuses: str) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            run: dict[str, Any] = (await mesh.http.get(f"/v1/{name}")).json()["run"]
            if run["status"] in statuses:
                return run
            await asyncio.sleep(0.05)


async def test_create_thread_with_a_thread_id_and_if_exists(mesh: Mesh) -> None:
    http = mesh.http
    tid = str(uuid.uuid4())
    body = {"threadId": tid, "thread": {"metadata": {"user": "ann"}}}
    made = await http.post("/v1/threads", json=body)
    assert made.status_code == 200, made.text
    assert made.json()["thread"]["name"] == f"threads/{tid}"

    taken = await http.post("/v1/threads", json=body)
    assert taken.status_code == 409, taken.text
    assert taken.json()["message"] == (
        f'threads/{tid} already exists; if_exists "do_nothing" returns it as it is'
    )
    # In the body as LangGraph's client sends it, or in the query string.
    for params, extra in (({}, {"ifExists": "do_nothing"}), ({"ifExists": "do_nothing"}, {})):
        again = await http.post(
            "/v1/threads",
            params=params,
            json={**body, **extra, "thread": {"metadata": {"user": "bob"}}},
        )
        assert again.status_code == 200, again.text
        assert again.json()["thread"]["name"] == f"threads/{tid}"
        assert again.json()["thread"]["metadata"] == {"user": "ann"}

    bad = await http.post("/v1/threads", json={"threadId": tid.upper(), "thread": {}})
    assert bad.status_code == 400, bad.text
    assert bad.json()["code"] == 3 and "must be a UUID" in bad.json()["message"]
    bad = await http.post("/v1/threads", json={"threadId": tid, "ifExists": "update"})
    assert bad.status_code == 400 and "if_exists 'update' must be one of" in bad.text


async def test_patch_thread_merges_metadata(mesh: Mesh) -> None:
    http = mesh.http
    made = await http.post("/v1/threads", json={"thread": {"metadata": {"a": 1, "b": 2}}})
    name = made.json()["thread"]["name"]
    patched = await http.patch(f"/v1/{name}", json={"thread": {"metadata": {"b": None, "c": 3}}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["thread"]["metadata"] == {"a": 1, "c": 3}
    assert (await http.get(f"/v1/{name}")).json()["thread"]["metadata"] == {"a": 1, "c": 3}
    masked = await http.patch(
        f"/v1/{name}", params={"updateMask": "metadata"}, json={"thread": {"metadata": {"d": 4}}}
    )
    assert masked.json()["thread"]["metadata"] == {"a": 1, "c": 3, "d": 4}
    refused = await http.patch(
        f"/v1/{name}", params={"updateMask": "runCount"}, json={"thread": {"metadata": {}}}
    )
    assert refused.status_code == 400 and "update_mask has unknown fields" in refused.text
    missing = await http.patch(f"/v1/threads/{uuid.uuid4()}", json={"thread": {"metadata": {}}})
    assert missing.status_code == 404, missing.text


async def test_delete_run_of_an_ended_run_only(mesh: Mesh) -> None:
    http = mesh.http
    done = await http.post(
        "/v1/runs", json={"run": {"workflow": "workflows/echo", "input": {"message": "hi"}}}
    )
    run = done.json()["run"]
    await wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    busy = await http.post(
        "/v1/runs",
        json={
            "run": {
                "workflow": "workflows/chat",
                "thread": run["thread"],
                "input": {"message": LONG, "model": "offline:echo?delay_ms=100"},
            }
        },
    )
    busy_name = busy.json()["run"]["name"]
    await wait_run(mesh, busy_name, "RUN_STATUS_RUNNING")
    refused = await http.delete(f"/v1/{busy_name}")
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == 9  # FAILED_PRECONDITION
    assert refused.json()["message"].startswith(f"{busy_name} is RUNNING: only an ended run")
    await http.post(f"/v1/{busy_name}:cancel", json={})

    gone = await http.delete(f"/v1/{run['name']}")
    assert gone.status_code == 200, gone.text
    assert (await http.get(f"/v1/{run['name']}")).status_code == 404
    assert (await http.delete(f"/v1/{run['name']}")).status_code == 404


async def test_copy_thread(mesh: Mesh) -> None:
    http = mesh.http
    done = await http.post(
        "/v1/runs",
        json={
            "run": {
                "workflow": "workflows/chat",
                "input": {"message": "remember me", "model": "offline:echo"},
            }
        },
    )
    run = done.json()["run"]
    await wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    source = (await http.get(f"/v1/{run['thread']}/state")).json()["state"]
    copied = await http.post(f"/v1/{run['thread']}:copy", json={})
    assert copied.status_code == 200, copied.text
    copy = copied.json()["thread"]["name"]
    assert copy != run["thread"]
    state = (await http.get(f"/v1/{copy}/state")).json()["state"]
    assert state["values"] == source["values"] and state["thread"] == copy
    missing = await http.post(f"/v1/threads/{uuid.uuid4()}:copy", json={})
    assert missing.status_code == 404, missing.text


async def test_the_openapi_document_has_the_new_routes(mesh: Mesh) -> None:
    paths = (await mesh.http.get("/openapi.json")).json()["paths"]
    assert paths["/v1/threads/{thread}"]["patch"]["operationId"] == "AgentService_UpdateThread"
    assert paths["/v1/runs/{run}"]["delete"]["operationId"] == "AgentService_DeleteRun"
    copy = paths["/v1/threads/{thread}:copy"]["post"]
    assert copy["operationId"] == "AgentService_CopyThread"


async def test_unset_metadata_reads_as_an_empty_object_everywhere(mesh: Mesh) -> None:
    """A thread or cron made without metadata shows `"metadata": {}` as a document does (QA s27
    L9: threads and crons said `null`, so a client's `thread.metadata.user` threw)."""
    http = mesh.http
    thread = (await http.post("/v1/threads", json={"thread": {}})).json()["thread"]
    assert thread["metadata"] == {}
    assert (await http.get(f"/v1/{thread['name']}")).json()["thread"]["metadata"] == {}
    listed = (await http.get("/v1/threads", params={"pageSize": 100})).json()["threads"]
    assert all(t["metadata"] is not None for t in listed)
    agent = f"meta-{uuid.uuid4().hex[:10]}"
    made = await http.post(
        "/v1/agents", params={"agentId": agent}, json={"agent": {"model": "offline:echo"}}
    )
    assert made.status_code == 200, made.text
    cron = await http.post(
        "/v1/crons",
        json={
            "cron": {
                "agent": f"agents/{agent}",
                "schedule": "0 0 1 1 *",
                "input": {"message": "hi"},
            }
        },
    )
    assert cron.status_code == 200, cron.text
    assert cron.json()["cron"]["metadata"] == {}
    document = await http.post(
        "/v1/documents",
        content=f"metadata check {uuid.uuid4().hex}".encode(),
        headers={"Content-Type": "text/plain", "Content-Disposition": "attachment; filename=n.txt"},
    )
    assert document.status_code == 200, document.text
    assert document.json()["document"]["metadata"] == {}
