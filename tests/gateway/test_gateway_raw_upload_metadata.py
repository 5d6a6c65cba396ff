"""A raw (non-multipart) upload carries `metadata` in its query string (QA s27b L4).

docs/gateway.md says a raw upload takes the DocumentSource fields from the query string, but
`?metadata=…` was a 400 ("cannot be set in the query string; send it in a JSON body"): a raw
upload had no way to carry metadata at all. It is now read as a JSON object, the same way a
multipart form field `metadata` is, and refused the same way when it is not one.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from gateway_helpers import Mesh


async def _raw(mesh: Mesh, params: dict[str, str], content: bytes) -> Any:
    return await mesh.http.post(
        "/v1/documents",
        params=params,
        content=content,
        headers={"Content-Type": "text/markdown"},
    )


async def test_a_raw_upload_stores_the_metadata_of_its_query_string(mesh: Mesh) -> None:
    tag = uuid.uuid4().hex[:8]
    content = f"# Raw {tag}\n\nThe heron waits by the sluice.\n".encode()
    metadata = {"team": "infra", "tags": ["a", "b"], "nested": {"level": 2}}
    reply = await _raw(mesh, {"title": f"raw-{tag}", "metadata": json.dumps(metadata)}, content)
    assert reply.status_code == 200, reply.text
    document = reply.json()["document"]
    assert document["title"] == f"raw-{tag}"
    assert document["metadata"] == metadata
    stored = await mesh.http.get(f"/v1/{document['name']}")
    assert stored.status_code == 200, stored.text
    assert stored.json()["document"]["metadata"] == metadata
    await mesh.http.delete(f"/v1/{document['name']}")


async def test_raw_upload_metadata_that_is_not_a_json_object_is_a_400_naming_it(
    mesh: Mesh,
) -> None:
    tag = uuid.uuid4().hex[:8]
    content = f"# Raw bad {tag}\n\nNothing is stored.\n".encode()
    cases = [
        ("[1, 2]", "query parameter 'metadata' must be a JSON object, not an array"),
        ("{not json", "query parameter 'metadata'"),
    ]
    for text, words in cases:
        reply = await _raw(mesh, {"title": f"raw-bad-{tag}", "metadata": text}, content)
        assert reply.status_code == 400, (text, reply.text)
        body = reply.json()
        assert body["code"] == 3, body
        assert words in body["message"], (text, body["message"])
    twice = await mesh.http.post(
        f"/v1/documents?title=raw-bad-{tag}&metadata=%7B%7D&metadata=%7B%7D",
        content=content,
        headers={"Content-Type": "text/markdown"},
    )
    assert twice.status_code == 400, twice.text
    assert "'metadata' is given more than once" in twice.json()["message"]
    listed = await mesh.http.get("/v1/documents", params={"pageSize": 1000})
    titles = {d.get("title") for d in listed.json().get("documents", [])}
    assert f"raw-bad-{tag}" not in titles, "a refused upload reached the rag service"
