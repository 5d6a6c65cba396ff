"""The dashboard's upload of a file `amelia ingest` stored is that file's document (QA s26).

`amelia ingest` names a file by its path; the dashboard's upload (multipart, the file alone, as
`static/js/api.js` sends it) cannot, and made a second document of the same bytes. Now the rag
service takes an upload named by its file name only, whose name and bytes a stored document
holds, as a re-ingest of that document (docs/rag.md, "Document identity").
"""

from __future__ import annotations

import base64
import uuid

from gateway_helpers import Mesh


async def test_the_dashboards_upload_of_an_ingested_file_answers_its_document(mesh: Mesh) -> None:
    tag = uuid.uuid4().hex[:8]
    path = f"/home/u/notes/ferry-{tag}.md"
    content = f"# Ferry {tag}\n\nThe ferry {tag} leaves at noon and waits for the tide.\n".encode()
    # What `amelia ingest` sends for the file: its path and file:// URI, no title.
    ingested = await mesh.http.post(
        "/v1/documents",
        json={
            "source": {"filePath": path, "sourceUri": f"file://{path}"},
            "content": base64.b64encode(content).decode(),
        },
    )
    assert ingested.status_code == 200, ingested.text
    document = ingested.json()["document"]

    uploaded = await mesh.http.post(
        "/v1/documents", files={"file": (f"ferry-{tag}.md", content, "text/markdown")}
    )
    assert uploaded.status_code == 200, uploaded.text
    body = uploaded.json()
    assert body["document"]["name"] == document["name"], "a second document of the same file"
    assert body["unchanged"] is True and body["document"]["filePath"] == path

    hashes: list[str] = []
    token = ""
    while True:
        listed = (
            await mesh.http.get("/v1/documents", params={"pageSize": 1000, "pageToken": token})
        ).json()
        hashes += [d["contentHash"] for d in listed.get("documents", [])]
        token = listed.get("nextPageToken", "")
        if not token:
            break
    assert hashes.count(document["contentHash"]) == 1
    await mesh.http.delete(f"/v1/{document['name']}")
