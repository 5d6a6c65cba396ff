"""A page token is bound to the request's other parameters (AIP-158): reused with another
order_by or filter it is refused saying so, not called one the service never returned."""

from __future__ import annotations

import asyncio

import httpx
from gateway_helpers import Mesh


async def _runs(http: httpx.AsyncClient, **params: object) -> httpx.Response:
    return await http.get("/v1/runs", params={"pageSize": 2, **params})


async def test_a_token_reused_with_another_order_or_filter_says_so(mesh: Mesh) -> None:
    http = mesh.http
    reply = await http.post(
        "/v1/agents", json={"agent": {"displayName": "Pager", "model": "offline:echo"}}
    )
    assert reply.status_code == 200, reply.text
    agent = reply.json()["agent"]["name"]
    created = []
    for i in range(3):
        run = await http.post(
            "/v1/runs", json={"run": {"agent": agent, "input": {"message": f"m{i}"}}}
        )
        assert run.status_code == 200, run.text
        created.append(run.json()["run"]["name"])
    # Duration is a key that changes while a run runs (keyset paging over it may then skip or
    # repeat a run, as any cursor over a changing key): page once all three have ended.
    for _ in range(600):
        done = await http.get(
            "/v1/runs", params={"statuses": "RUN_STATUS_COMPLETED", "agent": agent}
        )
        if len(done.json().get("runs", [])) == len(created):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the three runs did not complete")

    first = (await _runs(http, agent=agent, orderBy="duration")).json()
    token = first["nextPageToken"]
    assert token and len(first["runs"]) == 2

    for changed in (
        {"agent": agent},
        {"orderBy": "duration"},
        {"agent": agent, "orderBy": "create_time"},
    ):
        refused = await _runs(http, pageToken=token, **changed)
        assert refused.status_code == 400, (changed, refused.text)
        assert refused.json()["message"] == (
            "page_token was made for a request with other parameters (another parent, filter"
            " or order_by): repeat the request's other parameters with it"
        ), changed

    # The same parameters (spaces in order_by do not matter, the page size may change) go on.
    rest = await _runs(http, agent=agent, orderBy=" duration ", pageSize=5, pageToken=token)
    assert rest.status_code == 200, rest.text
    names = [r["name"] for r in first["runs"] + rest.json()["runs"]]
    assert sorted(names) == sorted(created)

    # A token of another list is refused naming both lists, whatever its rows' ids look like
    # (they were taken for this list's ids: a 500, or a page silently skipping rows).
    threads = (await http.get("/v1/threads", params={"pageSize": 1})).json()["nextPageToken"]
    assert threads  # the three runs' threads
    foreign = [
        (threads, "/v1/runs", "ListThreads", "ListRuns"),
        (token, "/v1/threads", "ListRuns", "ListThreads"),
    ]
    for other, path, made_for, used in foreign:
        refused = await http.get(path, params={"pageToken": other})
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json()["message"] == (
            f"page_token was made for {made_for}, not {used}: pass a previous {used}"
            " response's next_page_token"
        )

    made_up = await _runs(http, agent=agent, pageToken="garbage!")
    assert made_up.status_code == 400
    assert "is not one this service returned" in made_up.json()["message"]
