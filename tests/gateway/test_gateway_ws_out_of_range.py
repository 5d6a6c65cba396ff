"""A resume point beyond the event log's end (a sequence saved before the log was wiped) is an
error naming the log's last sequence, on the socket and over HTTP, not a silent wait for the new
log to reach that number (the events service answers OUT_OF_RANGE)."""

from __future__ import annotations

import json
import re
import uuid

import httpx
from gateway_helpers import Client, Publisher, RunningGateway

BEYOND = 10_000_000_000


async def test_since_beyond_the_logs_end_is_a_final_error_naming_its_last_sequence(
    gateway: RunningGateway, http: httpx.AsyncClient, publisher: Publisher
) -> None:
    subject = f"qa/{uuid.uuid4().hex}"
    sequence = await publisher.publish(subject, event_type="qa.saved")

    client = await Client.connect(gateway.ws_url)
    await client.subscribe("a", filter={"types": ["qa.*"]}, since=BEYOND)
    error = await client.recv_type("error")
    assert error["subscription"] == "a" and error["final"] is True, error
    assert error["error"]["code"] == 11, error  # OUT_OF_RANGE
    message = error["error"]["message"]
    assert f"after_sequence {BEYOND} is beyond the end of the event log" in message, message
    last = re.search(r"its last sequence is (\d+)", message)
    assert last is not None and sequence <= int(last.group(1)) < BEYOND, message

    # The socket lives on: a resume point the log has works.
    await client.subscribe("b", filter={"subject": subject}, since=sequence - 1)
    [event] = await client.events(1)
    assert (event["subscription"], event["sequence"]) == ("b", sequence)
    await client.close()

    # HTTP: the stream does not open, a 400 says why.
    reply = await http.get("/v1/events:stream", params={"afterSequence": BEYOND})
    assert reply.status_code == 400, reply.text
    body = json.loads(reply.text)
    assert body["code"] == 11 and "beyond the end of the event log" in body["message"], body
