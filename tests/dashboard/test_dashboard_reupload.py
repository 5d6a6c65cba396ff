"""The dashboard's upload of a file `amelia ingest` stored is that document (QA s26).

The browser cannot send the file's path, so its upload made a second document of the same file.
Now the rag service answers with the ingested document (docs/rag.md, "Document identity"), and
the upload's row says what happened: "Refreshed" when the upload replaced the document's
metadata (none sent: cleared, as any re-ingest without metadata does), "Unchanged" when nothing
moved. Before, the row waited for a `document.indexed`, which a refresh never publishes: it
stayed "Indexing…", or said "1 chunk" as if stored again when the ingest's own event fell in
the second it looks back.
"""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import pytest
from dashboard_helpers import Mesh
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.slow


def _ready(mesh: Mesh, name: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while mesh.get(f"/v1/{name}")["document"]["state"] != "DOCUMENT_STATE_READY":
        assert time.monotonic() < deadline, f"{name} never ready"
        time.sleep(0.2)


def _choose(page: Page, file: Path) -> None:
    with page.expect_file_chooser() as chooser:
        page.click("#choose-files")
    chooser.value.set_files(str(file))


def test_uploading_an_ingested_file_answers_its_document(page: Page, mesh: Mesh) -> None:
    tag = uuid.uuid4().hex[:8]
    file = mesh.root / f"tides-{tag}.md"
    file.write_text(f"# Tides {tag}\n\nHigh water at six; the ferry {tag} waits for it.\n")
    # As `amelia ingest` names it (its path and file:// URI), with metadata an API client set.
    source = {"filePath": str(file), "sourceUri": file.as_uri(), "metadata": {"team": "harbour"}}
    content = base64.b64encode(file.read_bytes()).decode()
    document = mesh.post("/v1/documents", {"source": source, "content": content})["document"]
    _ready(mesh, document["name"])

    page.goto("/#/documents")
    expect(page.locator("#docs-table")).to_be_visible()
    uploads = page.locator(f'#uploads li[data-file="{file.name}"]')  # the newest first
    for count, outcome in ((1, "Refreshed"), (2, "Unchanged")):
        _choose(page, file)
        expect(uploads).to_have_count(count)
        expect(uploads.first).to_have_attribute("data-state", "done", timeout=60_000)
        expect(uploads.first).to_have_attribute("data-document", document["name"])
        expect(uploads.first.locator(".state")).to_have_text(outcome)

    rows = page.locator("#docs-table tbody tr", has_text=file.name)
    expect(rows).to_have_count(1)
    listed = mesh.get("/v1/documents?pageSize=1000")["documents"]
    assert [d["name"] for d in listed if d["contentHash"] == document["contentHash"]] == [
        document["name"]
    ]
    assert mesh.get(f"/v1/{document['name']}")["document"].get("metadata") in (None, {})
