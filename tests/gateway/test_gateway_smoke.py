"""The gateway starts, answers HTTP/JSON for the events service, and pushes events on /ws."""

from __future__ import annotations

import sys

import httpx
from gateway_helpers import Client, Publisher, RunningGateway, new_subject


async def test_publish_and_get_over_http(http: httpx.AsyncClient) -> None:
    subject = new_subject()
    reply = await http.post(
        "/v1/events", json={"event": {"type": "app.token", "subject": subject, "data": {"t": "hi"}}}
    )
    assert reply.status_code == 200, reply.text
    event = reply.json()["event"]
    assert event["subject"] == subject and event["data"] == {"t": "hi"}
    sequence = event["sequence"]
    got = await http.get(f"/v1/events/{sequence}")
    assert got.status_code == 200, got.text
    assert got.json()["event"]["id"] == event["id"]
    listed = await http.get("/v1/events", params={"filter.subject": subject})
    assert listed.status_code == 200, listed.text
    assert [e["id"] for e in listed.json()["events"]] == [event["id"]]


async def test_websocket_gets_live_events(gateway: RunningGateway, publisher: Publisher) -> None:
    subject = new_subject()
    client = await Client.connect(gateway.ws_url)
    await client.subscribe("s1", filter={"subject": subject})
    sequences = [await publisher.publish(subject, data={"i": i}) for i in range(3)]
    events = await client.events(3)
    assert [e["sequence"] for e in events] == sequences
    assert all(e["subscription"] == "s1" for e in events)
    assert [e["event"]["data"]["i"] for e in events] == [0, 1, 2]
    await client.close()


def test_gateway_does_not_import_the_services_or_torch() -> None:
    import subprocess

    code = (
        "import sys, amelia_gateway, amelia_gateway.server, amelia_gateway.app;"
        "bad=[m for m in ('torch','sentence_transformers','amelia_events','amelia_agents',"
        "'amelia_rag','sqlalchemy','nats') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
