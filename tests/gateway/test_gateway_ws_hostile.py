"""Hostile socket messages: each gets an `error` (code 3) and the socket stays open and usable.

Messages go through the same JSON parser as HTTP bodies (depth, digits, NaN/Infinity, lone
surrogates), and a message the gateway fails on in a way nobody foresaw is answered with an
error too (INTERNAL), never a dropped socket.
"""

from __future__ import annotations

import json

import pytest
from gateway_helpers import Client, Publisher, RunningGateway, new_subject

DEPTH = 100_000

# (raw text frame, a word the error message must contain)
HOSTILE_MESSAGES: dict[str, tuple[str, str]] = {
    "lone surrogate in the id": ('{"type":"subscribe","id":"\\ud800","filter":{}}', "surrogate"),
    "lone surrogate in the subject": (
        '{"type":"subscribe","id":"s","filter":{"subject":"runs/\\udfff"}}',
        "surrogate",
    ),
    "lone surrogate in a type": (
        '{"type":"subscribe","id":"s","filter":{"types":["run.\\udbff"]}}',
        "surrogate",
    ),
    "nested past the recursion limit": ('{"a":' * DEPTH + "1" + "}" * DEPTH, "nested"),
    "nested arrays": ('{"type":"ping","a":' + "[" * DEPTH + "]" * DEPTH + "}", "nested"),
    "nested 40 deep": ('{"type":"ping","a":' + '{"a":' * 40 + "1" + "}" * 40 + "}", "nested"),
    "5000-digit since": ('{"type":"subscribe","id":"s","since":' + "9" * 5000 + "}", "digits"),
    "5000-digit since as text": (
        '{"type":"subscribe","id":"s","since":"' + "9" * 5000 + '"}',
        "since",
    ),
    "superscript digit since": ('{"type":"subscribe","id":"s","since":"\\u00b2"}', "since"),
    "NaN": ('{"type":"subscribe","id":"s","since":NaN}', "NaN"),
    "Infinity id": ('{"type":"subscribe","id":Infinity}', "Infinity"),
    "1e999 id": ('{"type":"subscribe","id":1e999}', "finite"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MESSAGES))
async def test_a_hostile_message_gets_an_error_and_the_socket_stays_open(
    gateway: RunningGateway, publisher: Publisher, case: str
) -> None:
    text, word = HOSTILE_MESSAGES[case]
    client = await Client.connect(gateway.ws_url)
    await client.ws.send(text)
    reply = await client.recv_type("error")
    assert reply["error"]["code"] == 3, reply
    assert word in reply["error"]["message"], reply
    assert reply["final"] is True
    assert reply["subscription"] in (None, "s"), reply

    # The same socket still works: a valid subscription gets its events.
    subject = new_subject()
    await client.subscribe("ok", filter={"subject": subject})
    sequence = await publisher.publish(subject)
    assert [m["sequence"] for m in await client.events(1)] == [sequence]
    await client.close()


async def test_every_hostile_message_in_a_row_on_one_socket(
    gateway: RunningGateway, publisher: Publisher
) -> None:
    client = await Client.connect(gateway.ws_url)
    for text, _ in HOSTILE_MESSAGES.values():
        await client.ws.send(text)
        assert (await client.recv_type("error"))["error"]["code"] == 3
    await client.ws.send(json.dumps({"type": "ping"}))
    assert (await client.recv_type("pong"))["type"] == "pong"
    subject = new_subject()
    await client.subscribe(7, filter={"subject": subject})
    sequence = await publisher.publish(subject)
    assert [m["sequence"] for m in await client.events(1)] == [sequence]
    await client.close()
