"""`updateMask` in the query string names fields as the JSON does (lowerCamelCase, grpc-gateway's
and AIP-161's convention, and the names docs/gateway.md lists for crons) or as the proto does
(snake_case): QA s27b found `?updateMask=systemPrompt` and `?updateMask=endTime,multitaskStrategy`
refused with 400 (F5)."""

from __future__ import annotations

import uuid

from gateway_helpers import Mesh


async def test_a_query_update_mask_takes_json_and_proto_field_names(mesh: Mesh) -> None:
    http = mesh.http
    agent_id = f"mask-{uuid.uuid4().hex[:8]}"
    made = await http.post(
        "/v1/agents", params={"agentId": agent_id}, json={"agent": {"model": "offline:echo"}}
    )
    assert made.status_code == 200, made.text
    agent = made.json()["agent"]["name"]
    for mask, prompt in (("systemPrompt", "camel"), ("system_prompt", "snake")):
        reply = await http.patch(
            f"/v1/{agent}",
            params={"updateMask": mask},
            json={"agent": {"systemPrompt": prompt, "displayName": prompt}},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["agent"]["systemPrompt"] == prompt
        shown = reply.json()["agent"].get("displayName")
        assert shown == made.json()["agent"].get("displayName")  # not in the mask
    refused = await http.patch(
        f"/v1/{agent}", params={"updateMask": "SystemPrompt"}, json={"agent": {}}
    )
    assert refused.status_code == 400, refused.text
    assert "update_mask has unknown fields ['SystemPrompt']" in refused.json()["message"]

    thread = (await http.post("/v1/threads", json={"thread": {}})).json()["thread"]["name"]
    cron = await http.post(
        f"/v1/{thread}/crons",
        json={"cron": {"agent": agent, "schedule": "0 0 1 1 *", "input": {"message": "hi"}}},
    )
    assert cron.status_code == 200, cron.text
    name = cron.json()["cron"]["name"]
    change = {"endTime": "2999-01-01T00:00:00Z", "multitaskStrategy": "enqueue"}
    for mask in ("endTime,multitaskStrategy", "end_time,multitask_strategy"):
        reply = await http.patch(f"/v1/{name}", params={"updateMask": mask}, json={"cron": change})
        assert reply.status_code == 200, (mask, reply.text)
        updated = reply.json()["cron"]
        assert (updated["endTime"], updated["multitaskStrategy"]) == (
            change["endTime"],
            change["multitaskStrategy"],
        )
        change = {"endTime": "2998-01-01T00:00:00Z", "multitaskStrategy": "interrupt"}
    assert (await http.delete(f"/v1/{name}")).status_code == 200
    assert (await http.delete(f"/v1/{thread}")).status_code == 200
    assert (await http.delete(f"/v1/{agent}")).status_code == 200
