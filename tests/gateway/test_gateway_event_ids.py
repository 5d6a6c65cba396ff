"""`POST /v1/events` and `/v1/events:batchPublish` with an event id already stored (QA s21 F1):
a retry answers the event as stored (what `GET /v1/events/{sequence}` gives), an id reused for
other content is 409 ALREADY_EXISTS naming the id and the stored sequence."""

from __future__ import annotations

import uuid

import httpx


async def test_a_reused_event_id_over_http(http: httpx.AsyncClient) -> None:
    subject = f"qa/{uuid.uuid4().hex}"
    event_id = f"qa21-{uuid.uuid4().hex}"
    sent = {"id": event_id, "type": "app.dup", "subject": subject, "data": {"v": 1}}
    first = await http.post("/v1/events", json={"event": sent})
    assert first.status_code == 200, first.text
    stored = first.json()["event"]
    sequence = stored["sequence"]

    again = await http.post("/v1/events", json={"event": sent})
    assert again.status_code == 200, again.text
    got = await http.get(f"/v1/events/{sequence}")
    assert again.json()["event"] == got.json()["event"] == stored

    other = {**sent, "type": "app.other", "subject": "x/y", "data": {"v": 2}}
    for path, body in (
        ("/v1/events", {"event": other}),
        ("/v1/events:batchPublish", {"events": [other]}),
    ):
        reply = await http.post(path, json=body)
        assert reply.status_code == 409, (path, reply.text)
        error = reply.json()
        assert error["code"] == 6, error
        assert f"event id '{event_id}' is already stored at sequence {sequence}" in error["message"]

    batch = await http.post(
        "/v1/events:batchPublish",
        json={"events": [{"type": "app.dup", "subject": subject, "data": {"n": 1}}, sent]},
    )
    assert batch.status_code == 200, batch.text
    assert batch.json()["events"][1] == stored
    listed = await http.get("/v1/events", params={"filter.subject": subject})
    assert [e["data"] for e in listed.json()["events"]] == [{"v": 1}, {"n": 1}]
