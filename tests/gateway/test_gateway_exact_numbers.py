"""Numbers over HTTP are kept as sent, or refused with a message that says why (QA F3, F4).

Free-form JSON (run input, metadata, event data, state values: a google.protobuf.Struct) holds
every number as a double, exact for integers within ±2^53 only: 9007199254740993 was stored
as 9007199254740992 without a word. Such an integer is now a 400 naming its path, and nothing
is stored; integers a double holds and decimals (0.1, 1e30) are kept. A Duration beyond
protobuf's own range (±315576000000s) said it was not "like \"30s\"" although it was; it now
says it is out of range, with the field's own range where it has one (run.timeout), as the
agents service says for one within Duration's range but too long.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from gateway_helpers import Mesh, new_subject

ADVICE = "integers must be within ±2^53 to be kept exactly; send it as a string"
TOO_LONG = "is out of range: use 1s to 604800s (7 days)"
DURATION_LIMIT = "is out of range: use -315576000000s to 315576000000s (a Duration's limit)"


def _refused(reply: httpx.Response) -> str:
    """The message of a 400 INVALID_ARGUMENT google.rpc.Status body."""
    assert reply.status_code == 400, (reply.status_code, reply.text[:500])
    body: dict[str, Any] = reply.json()
    assert body["code"] == 3, body
    (info,) = body["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.RequestInfo", body
    message: str = body["message"]
    return message


async def _agent(http: httpx.AsyncClient) -> str:
    reply = await http.post("/v1/agents", json={"agent": {"model": "offline:echo"}})
    assert reply.status_code == 200, reply.text
    name: str = reply.json()["agent"]["name"]
    return name


async def _runs_of(http: httpx.AsyncClient, agent: str) -> list[dict[str, Any]]:
    reply = await http.get("/v1/runs", params={"agent": agent})
    assert reply.status_code == 200, reply.text
    runs: list[dict[str, Any]] = reply.json()["runs"]
    return runs


async def test_an_integer_a_double_cannot_hold_is_refused_and_no_run_is_created(
    mesh: Mesh,
) -> None:
    http = mesh.http
    agent = await _agent(http)
    for value, stored in (
        (2**53 + 1, "9007199254740992"),
        (-(2**53) - 1, "-9007199254740992"),
        (123456789012345678901234567890, "1.2345678901234568e+29"),
        (10**30, "1e+30"),  # 1e30 written as an integer
        (10**400, "too large for a double"),
    ):
        run = {"agent": agent, "input": {"message": "a", "id": value}}
        message = _refused(await http.post("/v1/runs", json={"run": run}))
        assert message.startswith(f"run.input.id: the integer {str(value)[:20]}"), message
        assert stored in message and message.endswith(ADVICE), message
    # Deep in the input, and in a list: the path leads to it.
    run = {"agent": agent, "input": {"a": {"b": [1, 2**53 + 3]}}}
    message = _refused(await http.post("/v1/runs", json={"run": run}))
    assert message.startswith("run.input.a.b[1]: the integer 9007199254740995 "), message
    assert await _runs_of(http, agent) == []


async def test_integers_a_double_holds_and_decimals_are_kept(mesh: Mesh) -> None:
    http = mesh.http
    agent = await _agent(http)
    sent = {
        "message": "a",
        "limit": 9007199254740992,
        "low": -9007199254740992,
        "power": 2**60,  # beyond 2^53, but a double holds it exactly
        "tenth": 0.1,
        "large": 1e30,  # a decimal: JSON's numbers are doubles everywhere
        "small": 5e-324,
    }
    created = await http.post("/v1/runs", json={"run": {"agent": agent, "input": sent}})
    assert created.status_code == 200, created.text
    got = (await http.get(f"/v1/{created.json()['run']['name']}")).json()["run"]["input"]
    assert got == sent and got["limit"] == 9007199254740992, got


async def test_inexact_integers_are_refused_in_every_free_form_field(mesh: Mesh) -> None:
    http = mesh.http
    subject = new_subject()
    event = {"event": {"type": "app.token", "subject": subject, "data": {"n": 2**53 + 1}}}
    message = _refused(await http.post("/v1/events", json=event))
    assert message.startswith("event.data.n: the integer 9007199254740993 "), message
    listed = await http.get("/v1/events", params={"filter.subject": subject})
    assert listed.status_code == 200 and listed.json()["events"] == [], listed.text

    suite = uuid.uuid4().hex
    thread = {"thread": {"metadata": {"suite": suite, "ids": [2**64 + 1]}}}
    message = _refused(await http.post("/v1/threads", json=thread))
    assert message.startswith("thread.metadata.ids[0]: the integer 18446744073709551617 "), message
    found = await http.post("/v1/threads:search", json={"metadataFilter": {"suite": suite}})
    assert found.status_code == 200 and found.json()["threads"] == [], found.text

    reply = await http.post(
        "/v1/documents",
        data={"metadata": '{"n": -9007199254740997}'},
        files={"file": ("notes.txt", b"hello", "text/plain")},
    )
    message = _refused(reply)
    assert message.startswith("form fields: metadata.n: the integer -9007199254740997 "), message
    assert message.endswith(ADVICE), message


async def test_typed_integers_out_of_range_still_say_their_range(mesh: Mesh) -> None:
    """int64 fields are not doubles: their own range, checked as before, with their message."""
    http = mesh.http
    message = _refused(await http.get("/v1/events", params={"afterSequence": str(2**64)}))
    assert message == (
        "query parameter 'afterSequence': must be an integer from 0 to 18446744073709551615,"
        ' got "18446744073709551616"'
    )
    body = {"event": {"type": "app.token", "subject": new_subject(), "sequence": 2**64}}
    message = _refused(await http.post("/v1/events", json=body))
    assert message == (
        "event.sequence: must be an integer from 0 to 18446744073709551615, got 2**64"
    ).replace("2**64", str(2**64))
    message = _refused(await http.get("/v1/runs", params={"pageSize": str(2**31)}))
    assert message.startswith("query parameter 'pageSize': must be an integer from"), message
    reply = await http.get("/v1/events", params={"afterSequence": str(2**53 + 1)})
    assert reply.status_code == 200, reply.text


async def test_a_timeout_beyond_durations_range_is_out_of_range_and_no_run_is_created(
    mesh: Mesh,
) -> None:
    http = mesh.http
    agent = await _agent(http)
    # 700000s and 315576000000s are Durations, refused by the agents service; the others are
    # beyond Duration's range, refused by the gateway: the same words.
    for timeout in (
        "700000s",
        "315576000000s",
        "315576000001s",
        "999999999999s",
        "-315576000001s",
        "99999999999999999999999.5s",
    ):
        run = {"agent": agent, "input": {"message": "a"}, "timeout": timeout}
        assert _refused(await http.post("/v1/runs", json={"run": run})) == (
            f"run.timeout {timeout} {TOO_LONG}"
        )
    reply = await http.post(
        "/v1/agents", json={"agent": {"model": "offline:echo", "timeout": "315576000001s"}}
    )
    assert _refused(reply) == f"agent.timeout 315576000001s {TOO_LONG}"
    # Still not in the form: the form's message, as before.
    run = {"agent": agent, "input": {"message": "a"}, "timeout": "1e3s"}
    message = _refused(await http.post("/v1/runs", json={"run": run}))
    assert message == 'run.timeout: must be a duration in seconds like "30s" or "1.5s", got "1e3s"'
    assert await _runs_of(http, agent) == []


async def test_a_duration_without_a_range_of_its_own_names_durations_limit(mesh: Mesh) -> None:
    http = mesh.http
    agent = await _agent(http)
    created = await http.post("/v1/runs", json={"run": {"agent": agent, "input": {"message": "a"}}})
    assert created.status_code == 200, created.text
    name = created.json()["run"]["name"]
    reply = await http.post(f"/v1/{name}:wait", json={"timeout": "315576000001s"})
    assert _refused(reply) == f"timeout 315576000001s {DURATION_LIMIT}"


def test_the_known_duration_ranges_are_the_agents_services() -> None:
    """The gateway's copy of the ranges the agents service checks, so both say the same."""
    from amelia_agents.convert import DURATION_RANGES as SERVICE_RANGES
    from amelia_gateway.transcode import DURATION_RANGES

    assert DURATION_RANGES == SERVICE_RANGES
