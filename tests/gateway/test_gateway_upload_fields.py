"""A multipart upload's form fields, each taken once (QA s26 F7).

`filePath` sent twice, or named in the `source` JSON and again as a form field with another
value, silently took one of them: the document was stored under a path the client may not have
meant. Now every field given twice — whatever the values, as a query parameter twice is — is a
400 with a google.rpc.Status body naming it, and nothing reaches the rag service; a query string
beside a multipart body (ignored before) is refused too.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from gateway_helpers import Mesh


def _status(reply: httpx.Response) -> dict[str, Any]:
    """The 400 google.rpc.Status body every gateway refusal has."""
    assert reply.status_code == 400, (reply.status_code, reply.text[:500])
    assert reply.headers["content-type"] == "application/json"
    body: dict[str, Any] = reply.json()
    assert body["code"] == 3, body  # INVALID_ARGUMENT
    (info,) = body["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.RequestInfo"
    return body


async def _upload(mesh: Mesh, data: Any, content: bytes, url: str = "/v1/documents") -> Any:
    return await mesh.http.post(
        url, data=data, files={"file": ("notes.md", content, "text/markdown")}
    )


async def _paths(mesh: Mesh) -> set[str]:
    """Every stored document's file path."""
    found: set[str] = set()
    token = ""
    while True:
        reply = await mesh.http.get("/v1/documents", params={"pageSize": 1000, "pageToken": token})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        found |= {d.get("filePath", "") for d in body.get("documents", [])}
        token = body.get("nextPageToken", "")
        if not token:
            return found


async def test_a_form_field_given_twice_or_beside_source_is_a_400_naming_it(mesh: Mesh) -> None:
    tag = uuid.uuid4().hex[:8]
    a, b = f"/tmp/fields-{tag}/a.md", f"/tmp/fields-{tag}/b.md"
    content = f"# Fields {tag}\n\nThe ferry leaves at noon.\n".encode()
    cases: list[tuple[Any, str]] = [
        ({"filePath": [a, b]}, "form field 'filePath' is given more than once"),
        ({"filePath": [a, a]}, "form field 'filePath' is given more than once"),
        ({"filePath": a, "file_path": b}, "'filePath' and 'file_path' name the same field"),
        ({"title": ["One", "Two"]}, "form field 'title' is given more than once"),
        ({"metadata": ['{"team": "a"}', '{"team": "b"}']}, "'metadata' is given more than once"),
        (
            {"source": json.dumps({"filePath": a}), "filePath": b},
            "form field 'filePath' is also given in form field 'source'",
        ),
        (
            {"source": json.dumps({"file_path": a}), "filePath": a},
            "form field 'filePath' is also given in form field 'source'",
        ),
        (
            {"source": json.dumps({"metadata": {"team": "a"}}), "metadata": '{"team": "b"}'},
            "form field 'metadata' is also given in form field 'source'",
        ),
        (
            {"source": [json.dumps({"filePath": a}), json.dumps({"filePath": b})]},
            "form field 'source' is given more than once",
        ),
    ]
    for data, words in cases:
        message = _status(await _upload(mesh, data, content))["message"]
        assert words in message, (data, message)

    query = await _upload(mesh, {"filePath": a}, content, f"/v1/documents?filePath={b}")
    assert "query parameter 'filePath'" in _status(query)["message"]
    assert "form fields" in _status(query)["message"]
    stored = await _paths(mesh)
    assert a not in stored and b not in stored, "a refused upload reached the rag service"


async def test_each_field_once_is_taken_from_wherever_it_is_sent(mesh: Mesh) -> None:
    """Fields split between `source` and form fields, none twice, are all taken."""
    tag = uuid.uuid4().hex[:8]
    path = f"/tmp/fields-{tag}/split.md"
    content = f"# Split {tag}\n\nThe lock keeper waves.\n".encode()
    reply = await _upload(
        mesh,
        {"source": json.dumps({"filePath": path}), "title": "Split", "metadata": '{"k": "v"}'},
        content,
    )
    assert reply.status_code == 200, reply.text
    document = reply.json()["document"]
    assert (document["filePath"], document["title"]) == (path, "Split")
    assert document["metadata"] == {"k": "v"}
    await mesh.http.delete(f"/v1/{document['name']}")
