"""Metadata filters through the gateway, against the real agents and rag services.

QA L5: `metadataFilter[team]=bulk&metadataFilter[team]=qa` kept the last value; a map key given
twice is now a 400 as a field given twice is. QA L3: `{"metadataFilter": {"n": 1}}` in a JSON
body was a 400 ("each value a string"); LangGraph's threads/search takes any JSON value there. A
number or a boolean is now sent as its JSON text, which the services match against a metadata
value as text and, for a number, as a number — as `metadataFilter[n]=1` in the query string
always has. An object, an array or null is still a 400 naming what is accepted."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from gateway_helpers import Mesh

SEEN = "a JSON object, each value a string, a number or true/false"


def _names(reply: Any, key: str) -> list[str]:
    assert reply.status_code == 200, reply.text
    return [item["name"] for item in reply.json()[key]]


async def test_a_map_key_twice_in_the_query_string_is_a_400_naming_it(mesh: Mesh) -> None:
    for path in ("/v1/threads", "/v1/threads:count", "/v1/documents"):
        reply = await mesh.http.get(f"{path}?metadataFilter[team]=bulk&metadataFilter[team]=qa")
        assert reply.status_code == 400, reply.text
        status = reply.json()  # google.rpc.Status
        assert (status["code"], status["message"]) == (
            3,
            "query parameter 'metadataFilter[team]' is given more than once",
        )
        assert status["details"][0]["@type"].endswith("google.rpc.RequestInfo")


async def test_numbers_and_booleans_in_a_json_metadata_filter_find_threads(mesh: Mesh) -> None:
    http = mesh.http
    suite = uuid.uuid4().hex[:8]
    made = {}
    for label, metadata in {
        "number": {"suite": suite, "n": 1, "ok": True},
        "other number": {"suite": suite, "n": 2, "ok": False},
        "text": {"suite": suite, "n": "1", "ok": "yes"},
    }.items():
        reply = await http.post("/v1/threads", json={"thread": {"metadata": metadata}})
        assert reply.status_code == 200, reply.text
        made[label] = reply.json()["thread"]["name"]

    def search(wanted: dict[str, Any]) -> Any:
        body = {"metadataFilter": {"suite": suite, **wanted}, "orderBy": "create_time"}
        return http.post("/v1/threads:search", json=body)

    assert _names(await search({"n": 1}), "threads") == [made["number"], made["text"]]
    assert _names(await search({"n": 2.0}), "threads") == [made["other number"]]
    assert _names(await search({"n": 1, "ok": True}), "threads") == [made["number"]]
    assert _names(await search({"ok": False}), "threads") == [made["other number"]]
    assert _names(await search({"ok": "yes"}), "threads") == [made["text"]]
    counted = await http.post(
        "/v1/threads:count", json={"metadataFilter": {"suite": suite, "n": 1}}
    )
    assert counted.status_code == 200 and counted.json()["count"] == "2", counted.text
    # The query string sends the same text.
    queried = await http.get(
        "/v1/threads",
        params={"metadataFilter[suite]": suite, "metadataFilter[n]": "1", "orderBy": "create_time"},
    )
    assert _names(queried, "threads") == [made["number"], made["text"]]

    for wanted in ({"n": None}, {"n": {"a": 1}}, {"n": [1]}):
        reply = await search(wanted)
        assert reply.status_code == 400, reply.text
        assert reply.json()["code"] == 3
        assert reply.json()["message"].startswith(f"metadataFilter: must be {SEEN}, got "), reply


async def test_a_number_in_a_json_metadata_filter_finds_documents(mesh: Mesh) -> None:
    team = uuid.uuid4().hex[:8]
    source = {"title": f"{team}.txt", "metadata": {"team": team, "year": 2024}}
    content = base64.b64encode(b"A numbered document.").decode()
    uploaded = await mesh.http.post("/v1/documents", json={"source": source, "content": content})
    assert uploaded.status_code == 200, uploaded.text
    name = uploaded.json()["document"]["name"]
    found = await mesh.http.post(
        "/v1/search",
        json={"query": "numbered document", "metadataFilter": {"team": team, "year": 2024}},
    )
    assert found.status_code == 200, found.text
    assert {hit["document"] for hit in found.json()["hits"]} == {name}
    other_year = await mesh.http.post(
        "/v1/search",
        json={"query": "numbered document", "metadataFilter": {"team": team, "year": 2023}},
    )
    assert other_year.status_code == 200 and other_year.json()["hits"] == [], other_year.text
