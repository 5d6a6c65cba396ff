"""The gateway in front of the whole mesh: real events, agents and rag services (port 0).

A run created over HTTP is followed on the socket (run subscription: StreamRun) to its end, and
resumed midway without gap or duplicate; documents go in as JSON, multipart and raw uploads;
unknown ids are 404 on every route; /v1/status reports every service and dependency. The whole
HTTP API is fuzzed against the same mesh in test_gateway_fuzz.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import httpx
from gateway_helpers import Client, Mesh

from amelia_gateway.routes import ROUTES


async def _agent(http: httpx.AsyncClient, model: str) -> str:
    reply = await http.post(
        "/v1/agents",
        json={"agent": {"displayName": "Echo", "model": model, "systemPrompt": "be brief"}},
    )
    assert reply.status_code == 200, reply.text
    name: str = reply.json()["agent"]["name"]
    return name


async def test_a_run_streams_to_its_end_and_resumes_without_gap(mesh: Mesh) -> None:
    http = mesh.http
    workflows = (await http.get("/v1/workflows")).json()["workflows"]
    assert workflows and all(w["name"].startswith("workflows/") for w in workflows)
    agent = await _agent(http, "offline:echo?delay_ms=20")
    message = " ".join(f"word{i}" for i in range(30))
    created = await http.post(
        "/v1/runs", json={"run": {"agent": agent, "input": {"message": message}}}
    )
    assert created.status_code == 200, created.text
    run = created.json()["run"]
    assert run["status"] in ("RUN_STATUS_QUEUED", "RUN_STATUS_RUNNING")

    client = await Client.connect(mesh.gateway.ws_url)
    await client.subscribe("r", run=run["name"])
    first = await client.events(8)
    await client.close()  # drop midway
    resumed = await Client.connect(mesh.gateway.ws_url)
    await resumed.subscribe("r", run=run["name"], since=first[-1]["sequence"])
    rest: list[dict[str, Any]] = []
    while True:
        message_ = await resumed.recv(timeout=60)
        if message_["type"] == "end":
            assert message_["subscription"] == "r"
            break
        assert message_["type"] == "event", message_
        rest.append(message_)
    await resumed.close()

    sequences = [m["sequence"] for m in first + rest]
    assert sequences == sorted(set(sequences))  # in order, no duplicate
    types = [m["event"]["type"] for m in first + rest]
    assert "run.token" in types
    tokens = "".join(
        m["event"]["data"].get("text", m["event"]["data"].get("token", ""))
        for m in first + rest
        if m["event"]["type"] == "run.token"
    )
    assert "word29" in tokens

    # The same run over HTTP: the log replayed from the start matches (no gap between them).
    async with http.stream("GET", f"/v1/{run['name']}:stream") as reply:
        assert reply.status_code == 200
        lines = [json.loads(line) async for line in reply.aiter_lines() if line]
    assert [int(line["result"]["event"]["sequence"]) for line in lines] == sequences

    # A batching run subscription gets the finished run in a few `events` messages, and resumes
    # midway the same way: each event once, in order.
    middle = sequences[len(sequences) // 2]
    batched = await Client.connect(mesh.gateway.ws_url)
    await batched.send({"type": "subscribe", "id": "all", "run": run["name"], "batch": True})
    await batched.send(
        {"type": "subscribe", "id": "rest", "run": run["name"], "since": middle, "batch": True}
    )
    messages: dict[str, list[dict[str, Any]]] = {"all": [], "rest": []}
    ended: set[str] = set()
    while ended != {"all", "rest"}:
        message_ = await batched.recv(timeout=60)
        if message_["type"] in ("subscribed", "ping"):
            continue
        if message_["type"] == "end":
            ended.add(message_["subscription"])
            continue
        assert message_["type"] == "events", message_
        messages[message_["subscription"]].append(message_)
    await batched.close()
    for sub, expected in (("all", sequences), ("rest", [s for s in sequences if s > middle])):
        got_sequences = [item["sequence"] for m in messages[sub] for item in m["events"]]
        assert got_sequences == expected, sub
        assert len(messages[sub]) < len(expected) / 4, (sub, len(messages[sub]))

    got = (await http.get(f"/v1/{run['name']}")).json()["run"]
    assert got["status"] == "RUN_STATUS_COMPLETED"
    page = (await http.get("/v1/runs", params={"pageSize": 1})).json()
    assert len(page["runs"]) == 1 and "nextPageToken" in page
    filtered = await http.get(
        "/v1/runs", params={"statuses": "RUN_STATUS_COMPLETED", "agent": agent}
    )
    assert run["name"] in [r["name"] for r in filtered.json()["runs"]]


async def test_a_run_created_and_streamed_in_one_post(mesh: Mesh) -> None:
    """`POST /v1/runs:stream` (LangGraph's runs stream): the run first, then each of its events
    once, as `GET …:stream` replays them; refusals are their HTTP status with a Status body."""
    http = mesh.http
    body = {"run": {"workflow": "workflows/echo", "input": {"message": "one two three"}}}
    async with http.stream("POST", "/v1/runs:stream", json=body) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) async for line in reply.aiter_lines() if line]
    run = lines[0]["result"]["run"]
    assert run["name"].startswith("runs/") and run["workflow"] == "workflows/echo"
    events = [line["result"]["event"] for line in lines[1:]]
    assert events[0]["type"] == "workflow.started" and events[-1]["type"] == "run.completed"
    async with http.stream("GET", f"/v1/{run['name']}:stream") as replay:
        replayed = [json.loads(line) async for line in replay.aiter_lines() if line]
    assert [e["id"] for e in events] == [line["result"]["event"]["id"] for line in replayed]

    missing = await http.post("/v1/runs:stream", json={"run": {"workflow": "workflows/nope"}})
    assert missing.status_code == 404, missing.text
    assert missing.json()["code"] == 5 and "workflows/nope" in missing.json()["message"]
    empty = await http.post("/v1/runs:stream", json={"run": {}})
    assert empty.status_code == 400 and empty.json()["code"] == 3, empty.text


async def test_cancel_and_unknown_ids(mesh: Mesh) -> None:
    http = mesh.http
    agent = await _agent(http, "offline:echo?delay_ms=200")
    created = await http.post(
        "/v1/runs", json={"run": {"agent": agent, "input": {"message": "a b c d e f g h"}}}
    )
    name = created.json()["run"]["name"]
    cancelled = await http.post(f"/v1/{name}:cancel", json={"reason": "changed my mind"})
    assert cancelled.status_code == 200, cancelled.text
    for _ in range(100):
        run = (await http.get(f"/v1/{name}")).json()["run"]
        if run["status"] == "RUN_STATUS_CANCELLED":
            break
        await asyncio.sleep(0.1)
    assert run["status"] == "RUN_STATUS_CANCELLED"

    missing = "00000000-0000-0000-0000-000000000000"
    ids = {
        "agent": "no-such-agent",
        "thread": missing,
        "run": missing,
        "document": missing,
        "checkpoint": "1f0c0000-0000-6000-8000-000000000000",
        "cron": missing,
    }
    for rule in ROUTES:
        if not rule.variables or rule.service == "EventService":
            continue
        path = rule.template.format(**{v: ids[v] for v in rule.variables})
        body = {"answer": "yes"} if rule.rpc == "ResumeRun" else {}
        reply = await http.request(rule.method, path, json=body if rule.body else None)
        assert reply.status_code == 404, (rule.rpc, reply.status_code, reply.text)
        assert reply.json()["code"] == 5
    # A run that does not exist, on the socket: checked before it is answered, so a final
    # NOT_FOUND error for that subscription and never a `subscribed` (was: subscribed, then
    # the error); a run that exists is subscribed on the same socket after it.
    client = await Client.connect(mesh.gateway.ws_url)
    await client.send({"type": "subscribe", "id": "x", "run": f"runs/{missing}"})
    error = await client.recv_type("error")
    assert error["subscription"] == "x" and error["error"]["code"] == 5 and error["final"]
    assert missing in error["error"]["message"], error
    await client.subscribe("y", run=name)
    await client.close()
    bad = await http.post("/v1/runs", json={"run": {"input": {"message": "no target"}}})
    assert bad.status_code == 400 and bad.json()["code"] == 3


async def test_documents_inline_multipart_and_raw_then_search(mesh: Mesh) -> None:
    http = mesh.http
    text = "# Gateways\n\nThe gateway streams events to browsers over WebSockets.\n"
    inline = await http.post(
        "/v1/documents",
        json={
            "source": {"title": "inline.md", "filePath": "/tmp/inline-gw.md"},
            "content": base64.b64encode(text.encode()).decode(),
        },
    )
    assert inline.status_code == 200, inline.text
    document = inline.json()["document"]
    assert document["type"] == "DOCUMENT_TYPE_MARKDOWN" and document["chunkCount"] >= 1

    body = ("The hub shares one upstream stream between many sockets. " * 4700).encode()
    assert len(body) > 256 * 1024  # more than one UploadDocument content message
    multipart = await http.post(
        "/v1/documents",
        data={"source": json.dumps({"filePath": "/tmp/hub-gw.txt"}), "metadata": '{"team": "gw"}'},
        files={"file": ("hub.txt", body, "text/plain")},
    )
    assert multipart.status_code == 200, multipart.text
    uploaded = multipart.json()["document"]
    assert uploaded["sizeBytes"] == str(len(body))
    # Titled by its file path's name (as IngestDocument and `amelia ingest` title it).
    assert uploaded["title"] == "hub-gw.txt" and uploaded["metadata"] == {"team": "gw"}

    raw = await http.post(
        "/v1/documents",
        content=b"Slow clients are closed with code 4008.",
        params={"title": "slow.txt", "sourceUri": "https://example.com/slow"},
        headers={"Content-Type": "application/octet-stream"},
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["document"]["title"] == "slow.txt"

    again = await http.post(
        "/v1/documents",
        content=b"Slow clients are closed with code 4008.",
        params={"title": "slow.txt", "sourceUri": "https://example.com/slow"},
        headers={"Content-Type": "application/octet-stream"},
    )
    assert again.json()["unchanged"] is True

    # No waiting: a document is found by its words as soon as its upload is answered, while
    # its chunks are embedded in the background (here behind the hundreds of hub.txt's).
    hits = await http.post("/v1/search", json={"query": "how are slow clients closed", "topK": 3})
    assert hits.status_code == 200, hits.text
    assert any("4008" in h["content"] for h in hits.json()["hits"])
    listed = await http.get("/v1/documents", params={"metadataFilter[team]": "gw"})
    assert [d["name"] for d in listed.json()["documents"]] == [uploaded["name"]]
    got = await http.get(f"/v1/{uploaded['name']}")
    assert got.json()["document"]["name"] == uploaded["name"]
    deleted = await http.delete(f"/v1/{uploaded['name']}")
    assert deleted.status_code == 200 and deleted.json() == {}
    assert (await http.get(f"/v1/{uploaded['name']}")).status_code == 404

    # Upload errors are 400s with a reason, not 500s.
    empty = await http.post(
        "/v1/documents", content=b"", headers={"Content-Type": "application/octet-stream"}
    )
    assert empty.status_code == 400 and empty.json()["code"] == 3
    no_file = await http.post("/v1/documents", data={"title": "x"}, files={"f": ("", b"")})
    assert no_file.status_code == 400, no_file.text
    broken = await http.post(
        "/v1/documents",
        content=b"--xyz\r\nnot a part",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert broken.status_code == 400, broken.text


async def test_status_reports_every_service_and_dependency(mesh: Mesh) -> None:
    status = (await mesh.http.get("/v1/status")).json()
    assert status["status"] == "SERVING", status
    for name in ("events", "agents", "rag"):
        assert status["services"][name]["status"] == "SERVING"
    assert status["services"]["agents"]["dependencies"] == {
        "nats": "SERVING",
        "postgres": "SERVING",
    }
    assert status["nats"] == "SERVING" and status["postgres"] == "SERVING"


def _message_fields(descriptor: Any) -> set[str]:
    """The JSON names of a message's fields outside a oneof (those always in a response)."""
    return {f.json_name for f in descriptor.fields if f.containing_oneof is None}


async def test_responses_carry_every_field_unset_messages_as_null(mesh: Mesh) -> None:
    """grpc-gateway's EmitUnpopulated: a client reads `run.output` or `run.startTime` of a
    queued run without checking that the key exists."""
    from amelia.v1 import agents_pb2

    http = mesh.http
    agent = await _agent(http, "offline:echo?delay_ms=20")
    created = await http.post(
        "/v1/runs", json={"run": {"agent": agent, "input": {"message": "hi"}}}
    )
    assert created.status_code == 200, created.text
    run = created.json()["run"]
    assert _message_fields(agents_pb2.Run.DESCRIPTOR) <= set(run), run
    assert run["agent"] == agent and "workflow" not in run  # the unset side of a oneof: absent
    assert run["output"] is None or isinstance(run["output"], dict), run
    for name in ("startTime", "endTime", "duration", "timeout"):
        assert run[name] is None or isinstance(run[name], str), run
    queued = (await http.get(f"/v1/{run['name']}")).json()["run"]
    assert _message_fields(agents_pb2.Run.DESCRIPTOR) <= set(queued)
    listed = (await http.get("/v1/runs", params={"agent": agent})).json()
    assert set(listed) == {"runs", "nextPageToken"}
    assert all(_message_fields(agents_pb2.Run.DESCRIPTOR) <= set(r) for r in listed["runs"])
    empty = (await http.get("/v1/runs", params={"agent": "agents/nobody-has-this"})).json()
    assert empty == {"runs": [], "nextPageToken": ""}


async def test_an_update_mask_is_taken_as_grpc_gateway_takes_it(mesh: Mesh) -> None:
    """`updateMask` as proto JSON writes a FieldMask (a comma-separated string of lowerCamelCase
    paths), or as a list of lowerCamelCase or snake_case paths."""
    http = mesh.http
    agent = await _agent(http, "offline:echo")
    for mask, tokens in (
        ("maxTokens,displayName", 11),
        (["maxTokens", "displayName"], 12),
        (["max_tokens", "display_name"], 13),
    ):
        reply = await http.patch(
            f"/v1/{agent}",
            json={"agent": {"maxTokens": tokens, "displayName": f"n{tokens}"}, "updateMask": mask},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["agent"]["maxTokens"] == tokens
        assert reply.json()["agent"]["displayName"] == f"n{tokens}"
    refused = await http.patch(
        f"/v1/{agent}", json={"agent": {"maxTokens": 3}, "updateMask": "maxTokenz"}
    )
    assert refused.status_code == 400 and "max_tokenz" in refused.json()["message"], refused.text


async def test_a_query_of_symbols_only_answers_a_list_of_hits(mesh: Mesh) -> None:
    """A query with no words (☃ 🎉) is still a search: `hits` is there, a list (empty or not),
    in every mode; never a bare `{}`."""
    http = mesh.http
    stored = await http.post(
        "/v1/documents",
        json={
            "source": {"title": "snow.md"},
            "content": base64.b64encode(b"# Snow\n\nA snowman.").decode(),
        },
    )
    assert stored.status_code == 200, stored.text
    for mode in ("SEARCH_MODE_VECTOR", "SEARCH_MODE_KEYWORD", "SEARCH_MODE_HYBRID"):
        reply = await http.post("/v1/search", json={"query": "☃ 🎉", "mode": mode, "topK": 3})
        assert reply.status_code in (200, 400), reply.text
        body = reply.json()
        if reply.status_code == 200:
            assert isinstance(body["hits"], list), body
        else:
            assert body["message"], body


async def test_a_token_larger_than_an_event_stays_a_string_and_says_it_was_cut(
    mesh: Mesh,
) -> None:
    """A run.token's `text` is a string for every reader: too large for an event (one 600 KB
    word from the echo model), it is its start, and `text_truncated` says how long it was."""
    http = mesh.http
    agent = await _agent(http, "offline:echo")
    word = "".join(f"{i:07d}" for i in range(90_000))  # 630,000 characters, no space: one token
    created = await http.post(
        "/v1/runs", json={"run": {"agent": agent, "input": {"message": word}}}
    )
    assert created.status_code == 200, created.text
    client = await Client.connect(mesh.gateway.ws_url)
    await client.subscribe("r", run=created.json()["run"]["name"])
    tokens: list[dict[str, Any]] = []
    while (message := await client.recv(timeout=120))["type"] != "end":
        assert message["type"] in ("event", "ping"), message
        if message["type"] == "event" and message["event"]["type"] == "run.token":
            tokens.append(message["event"]["data"])
    await client.close()
    assert len(tokens) == 1, [t.keys() for t in tokens]
    text, cut = tokens[0]["text"], tokens[0]["text_truncated"]
    assert isinstance(text, str) and word.startswith(text) and 0 < len(text) < len(word)
    assert cut["characters"] == len(word) and cut["see"].startswith("GetRun runs/"), cut


async def test_fields_beside_the_body_come_from_the_query_string(mesh: Mesh) -> None:
    """grpc-gateway's `body: "agent"`: the request's other fields may come from the query
    string, so a client chooses the id and retries safely: the second identical POST is a 409
    (the first created the agent), never a second agent. Was: 400 "unknown query parameter
    'agentId'"."""
    http = mesh.http
    agent_id = f"qa-{uuid.uuid4().hex[:12]}"
    body = {"agent": {"displayName": "Echo", "model": "offline:echo"}}
    first = await http.post("/v1/agents", params={"agentId": agent_id}, json=body)
    assert first.status_code == 200, first.text
    assert first.json()["agent"]["name"] == f"agents/{agent_id}"
    again = await http.post("/v1/agents", params={"agent_id": agent_id}, json=body)
    assert again.status_code == 409 and again.json()["code"] == 6, again.text
    # The same for every route whose body is a sub-field: a run's idempotency key.
    key = uuid.uuid4().hex
    run = {"run": {"agent": f"agents/{agent_id}", "input": {"message": "hi"}}}
    runs = [(await http.post("/v1/runs", params={"requestId": key}, json=run)) for _ in range(2)]
    assert [r.status_code for r in runs] == [200, 200], runs[0].text
    assert runs[0].json()["run"]["name"] == runs[1].json()["run"]["name"]
    # Refused: a field in both places, the body's own field, and any query on a "*" route.
    both = await http.post("/v1/agents", params={"agentId": "x"}, json={**body, "agentId": "y"})
    assert both.status_code == 400 and "both" in both.json()["message"], both.text
    resource = await http.post("/v1/agents", params={"agent.model": "x"}, json=body)
    assert resource.status_code == 400, resource.text
    assert "except agentId" in resource.json()["message"], resource.text
    search = await http.post("/v1/search", params={"topK": "3"}, json={"query": "x"})
    assert search.status_code == 400, search.text
    assert "unknown query parameter 'topK'" in search.json()["message"], search.text


async def test_a_long_id_is_not_echoed_whole_in_errors(mesh: Mesh) -> None:
    """GET /v1/runs/<8000 x a>: the agents service's INVALID_ARGUMENT quotes the name; the
    error (gRPC, then the gateway's body) carries its first 64 characters and its length, not
    an 8 KB message (was 8,175 bytes). The same on the socket and for the gateway's own errors."""
    http = mesh.http
    long_id = "a" * 8000
    reply = await http.get(f"/v1/runs/{long_id}")
    assert reply.status_code == 400, reply.text[:300]
    message = reply.json()["message"]
    assert f"'runs/{'a' * 59}…' (8005 characters)" in message, message
    assert len(reply.content) < 600, len(reply.content)
    own = await http.get("/v1/events", params={long_id: "1"})
    assert own.status_code == 400 and len(own.content) < 600, own.text[:300]
    assert "(8000 characters)" in own.json()["message"], own.text[:300]
    client = await Client.connect(mesh.gateway.ws_url)
    await client.send({"type": "nonsense", "id": "x", "filter": {"subject": long_id}})
    await client.send({"type": "subscribe", "id": "y", "filter": {"subject": f"runs/{long_id}"}})
    for _ in range(2):
        error = await client.recv_type("error")
        assert len(json.dumps(error)) < 600, json.dumps(error)[:300]
    await client.close()
