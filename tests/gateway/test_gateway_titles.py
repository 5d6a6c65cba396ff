"""A document's title is chosen the same way whichever way it came in: what `amelia ingest` sends,
a multipart or raw upload through the gateway, IngestDocument without a title — the client's
title, else the file path's file name, else what the page itself says for a URI (the rag
service decides; the CLI and the gateway no longer send a file name as the title themselves)."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from gateway_helpers import Mesh
from google.protobuf import json_format

from amelia_cli.commands.docs import _source

PAGE = (
    "<html><head><title>Kestrel Field Notes</title></head><body><main>"
    "<h1>Kestrel Field Notes</h1><p>The kestrel {word} hovers over the meadow.</p>"
    "</main></body></html>"
)


async def _title(mesh: Mesh, response_json: dict) -> str:
    """The stored document's title, as GetDocument gives it."""
    name = response_json["document"]["name"]
    got = await mesh.http.get(f"/v1/{name}")
    assert got.status_code == 200, got.text
    title: str = got.json()["document"]["title"]
    return title


async def _ingest(mesh: Mesh, source: dict, content: bytes) -> str:
    reply = await mesh.http.post(
        "/v1/documents",
        json={"source": source, "content": base64.b64encode(content).decode()},
    )
    assert reply.status_code == 200, reply.text
    return await _title(mesh, reply.json())


async def _multipart(mesh: Mesh, fields: dict, filename: str, content: bytes) -> str:
    reply = await mesh.http.post(
        "/v1/documents", data=fields, files={"file": (filename, content, "text/html")}
    )
    assert reply.status_code == 200, reply.text
    return await _title(mesh, reply.json())


async def _raw(mesh: Mesh, params: dict, filename: str, content: bytes) -> str:
    reply = await mesh.http.post(
        "/v1/documents",
        content=content,
        params=params,
        headers={
            "Content-Type": "text/html",
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )
    assert reply.status_code == 200, reply.text
    return await _title(mesh, reply.json())


async def test_every_way_in_titles_a_file_by_its_file_name(mesh: Mesh, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    content = PAGE.format(word=f"zq{tag}").encode()
    folder = f"/tmp/titles-{tag}"

    # `amelia ingest notes.html`: what the CLI sends (no title), through the gateway's JSON.
    cli_file = tmp_path / f"cli-{tag}.html"
    sent = json_format.MessageToDict(_source(cli_file))
    assert "title" not in sent and sent["filePath"] == str(cli_file)
    assert await _ingest(mesh, sent, content) == cli_file.name

    # IngestDocument without a title, with a file path.
    assert await _ingest(mesh, {"filePath": f"{folder}/json.html"}, content) == "json.html"
    # A multipart upload of a file alone: its file name (nothing else names it).
    assert await _multipart(mesh, {}, f"upload-{tag}.html", content) == f"upload-{tag}.html"
    # A multipart upload with a file path: the path's file name, as IngestDocument gives it.
    fields = {"filePath": f"{folder}/multipart.html"}
    assert await _multipart(mesh, fields, "blob", content) == "multipart.html"
    # A raw upload with a file path and a Content-Disposition file name: the same.
    params = {"filePath": f"{folder}/raw.html"}
    assert await _raw(mesh, params, "blob.html", content) == "raw.html"


async def test_a_page_from_a_uri_is_titled_alike_uploaded_or_ingested(mesh: Mesh) -> None:
    """With only a URI (no file path), the service titles a page by what it says (`<title>`):
    an upload's file name does not override that any more than IngestDocument would."""
    tag = uuid.uuid4().hex[:8]
    content = PAGE.format(word=f"zr{tag}").encode()
    base = f"https://example.com/{tag}"

    ingested = await _ingest(mesh, {"sourceUri": f"{base}/ingested.html"}, content)
    uploaded = await _multipart(mesh, {"sourceUri": f"{base}/multipart.html"}, "x.html", content)
    raw = await _raw(mesh, {"sourceUri": f"{base}/raw.html"}, "y.html", content)
    assert ingested == uploaded == raw == "Kestrel Field Notes"


async def test_a_title_given_wins_on_every_way_in(mesh: Mesh) -> None:
    tag = uuid.uuid4().hex[:8]
    content = PAGE.format(word=f"zs{tag}").encode()
    folder = f"/tmp/titled-{tag}"
    given = {"title": "My kestrel page"}
    assert await _ingest(mesh, {**given, "filePath": f"{folder}/a.html"}, content) == given["title"]
    fields = {**given, "filePath": f"{folder}/b.html"}
    assert await _multipart(mesh, fields, "b.html", content) == given["title"]
    params = {**given, "sourceUri": f"https://example.com/{tag}/c.html"}
    assert await _raw(mesh, params, "c.html", content) == given["title"]
