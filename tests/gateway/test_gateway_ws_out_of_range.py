"""A resume point beyond the event log's end (a sequence saved before the log was wiped) is an
error naming the log's last sequence, on the socket and over HTTP, not a silent wait for the new
log to reach that number (the events service answers OUT_OF_RANGE). On a socket it refuses the
subscribe: the error comes instead of `subscribed`, as for any refused subscribe."""

from __future__ import annotations

import json
import re
import uuid

import httpx
from gateway_helpers import Client, Mesh, Publisher, RunningGateway

BEYOND = 10_000_000_000


async def test_since_beyond_the_logs_end_is_a_final_error_naming_its_last_sequence(
    gateway: RunningGateway, http: httpx.AsyncClient, publisher: Publisher
) -> None:
    subject = f"qa/{uuid.uuid4().hex}"
    sequence = await publisher.publish(subject, event_type="qa.saved")

    client = await Client.connect(gateway.ws_url)
    # Refused before it is answered, like any refused subscribe: the error, never a
    # `subscribed` first (QA s21 F10: `subscribed`, then the final error).
    await client.send(
        {"type": "subscribe", "id": "a", "filter": {"types": ["qa.*"]}, "since": BEYOND}
    )
    error = await client.recv_type("error")
    assert error["subscription"] == "a" and error["final"] is True, error
    assert error["error"]["code"] == 11, error  # OUT_OF_RANGE
    message = error["error"]["message"]
    assert f"after_sequence {BEYOND} is beyond the end of the event log" in message, message
    last = re.search(r"its last sequence is (\d+)", message)
    assert last is not None and sequence <= int(last.group(1)) < BEYOND, message

    # The socket lives on, without a subscription "a": a resume point the log has works, and
    # is answered `subscribed` before its first event; "a" may be used again.
    await client.subscribe("b", filter={"subject": subject}, since=sequence - 1)
    [event] = await client.events(1)
    assert (event["subscription"], event["sequence"]) == ("b", sequence)
    await client.subscribe("a", filter={"subject": subject}, since=sequence)
    await client.close()

    # HTTP: the stream does not open, a 400 says why.
    reply = await http.get("/v1/events:stream", params={"afterSequence": BEYOND})
    assert reply.status_code == 400, reply.text
    body = json.loads(reply.text)
    assert body["code"] == 11 and "beyond the end of the event log" in body["message"], body


async def test_a_run_subscribe_since_beyond_the_logs_end_is_refused_before_subscribed(
    mesh: Mesh,
) -> None:
    """The same for a run's stream (AgentService.StreamRun checks the resume point too)."""
    created = await mesh.http.post(
        "/v1/runs", json={"run": {"workflow": "workflows/echo", "input": {"message": "hi"}}}
    )
    assert created.status_code == 200, created.text
    run = created.json()["run"]["name"]

    client = await Client.connect(mesh.gateway.ws_url)
    await client.send({"type": "subscribe", "id": "r", "run": run, "since": BEYOND})
    error = await client.recv_type("error")
    assert (error["subscription"], error["final"], error["error"]["code"]) == ("r", True, 11)
    assert "beyond the end of the event log" in error["error"]["message"], error

    await client.subscribe("r", run=run, since=0)  # the whole run, ending with it
    while (message := await client.recv())["type"] != "end":
        assert message["type"] in ("event", "ping"), message
    await client.close()
