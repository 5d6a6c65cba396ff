"""The documents screen's document view: open a document, read its chunks in order, the latest
search's hits marked; each document's indexing state; the top-k field deferring to the service.

Runs on the folder's shared mesh, at 1280×860 and at 390×844 (no sideways scroll)."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
from dashboard_helpers import Mesh
from dashboard_pages import shot
from playwright.sync_api import Page, ViewportSize, expect

pytestmark = pytest.mark.slow

SIZES: dict[str, ViewportSize] = {
    "desktop": {"width": 1280, "height": 860},
    "phone": {"width": 390, "height": 844},
}


def _manual(tag: str) -> str:
    sections = [
        ("Boilers", "The boiler heats water for the radiators."),
        ("Valves", f"Bleed each radiator valve{tag} once a year until water comes out."),
        ("Pumps", "The pump pushes warm water around the circuit."),
    ]
    body = "".join(
        f"## {name}\n\n{text} " + "It is described at length. " * 30 + "\n\n"
        for name, text in sections
    )
    return f"# Heating manual {tag}\n\n{body}"


def _fits(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), (
        f"the page is {width} px wide"
    )


@pytest.mark.parametrize("size", list(SIZES))
def test_open_a_document_read_its_chunks_with_the_search_hit_marked(
    size: str, page: Page, mesh: Mesh, artifacts: Path
) -> None:
    page.set_viewport_size(SIZES[size])
    tag = uuid.uuid4().hex[:8]
    title = f"heating-{tag}.md"
    stored = mesh.post(
        "/v1/documents",
        {"source": {"title": title}, "content": base64.b64encode(_manual(tag).encode()).decode()},
    )["document"]
    chunk_count = int(stored["chunkCount"])
    assert chunk_count >= 3
    page.goto("/#/documents")
    row = page.locator(f'#docs-table tr[data-document="{stored["name"]}"]')
    # The list shows where indexing is, and follows it to Ready (document.* events).
    expect(row.locator(".badge")).to_have_text("Ready", timeout=120_000)

    # The top-k field is empty: the search sends no top_k and the service's default applies.
    expect(page.locator("#search-topk")).to_have_value("")
    page.select_option("#search-mode", "SEARCH_MODE_KEYWORD")
    page.fill("#search-query", f"valve{tag}")
    with page.expect_request("**/v1/search") as sent:
        page.click("#search-form button[type=submit]")
    body = sent.value.post_data_json or {}
    assert "topK" not in body and "top_k" not in body, body
    hit = page.locator("#search-results .passage").first
    expect(hit.locator("blockquote")).to_contain_text(f"valve{tag}", timeout=60_000)

    # Show the hit in its document: every chunk in order, the hit's chunk marked.
    hit.locator(".open-in-document").click()
    panel = page.locator("#chunks-panel")
    expect(panel).to_be_visible()
    expect(panel.locator("#chunks-title")).to_have_text(title)
    chunks = panel.locator("#chunks-list > li")
    expect(chunks).to_have_count(chunk_count)
    indexes = chunks.evaluate_all("items => items.map(i => Number(i.dataset.chunkIndex))")
    assert indexes == list(range(chunk_count))
    marked = panel.locator('#chunks-list > li[data-hit="true"]')
    expect(marked.first).to_be_in_viewport()
    assert marked.count() >= 1
    expect(marked.first.locator("mark")).to_contain_text(f"valve{tag}")
    expect(marked.first.locator(".badge")).to_have_text("Search hit")
    expect(panel.locator('li[data-hit="false"]').first.locator("mark")).to_have_count(0)
    expect(panel.locator("#chunks-info")).to_contain_text(f"{chunk_count} chunks")
    expect(panel.locator("#chunks-info .badge")).to_have_text("Ready")
    _fits(page)
    shot(page, artifacts, f"30-document-chunks-{size}")

    # Open from the list: the same chunks; Close hides them.
    page.locator("#close-chunks").click()
    expect(panel).to_be_hidden()
    row.locator(".open-document").click()
    expect(chunks).to_have_count(chunk_count)
    expect(panel.locator('#chunks-list > li[data-hit="true"]')).to_have_count(marked.count())
    _fits(page)


def test_an_upload_says_stored_then_ready_never_indexed_before_it_is(
    page: Page, mesh: Mesh
) -> None:
    page.goto("/#/documents")
    expect(page.locator("#docs-table")).to_be_visible()
    page.evaluate(
        """() => {
          window.__said = [];
          new MutationObserver(() => {
            const text = document.getElementById('announcer').textContent;
            if (text) window.__said.push(text);
          }).observe(document.getElementById('announcer'), { childList: true, subtree: true, characterData: true });
        }"""
    )
    notes = mesh.root / f"boiler-{uuid.uuid4().hex[:6]}.md"
    notes.write_text(_manual(uuid.uuid4().hex[:8]))
    with page.expect_file_chooser() as chooser:
        page.click("#choose-files")
    chooser.value.set_files(str(notes))
    upload = page.locator(f'#uploads li[data-file="{notes.name}"]')
    expect(upload).to_have_attribute("data-state", "done", timeout=120_000)
    said = [s for s in page.evaluate("window.__said") if notes.name in s]
    assert said[0] == f"{notes.name} stored; indexing", said
    assert said[-1] == f"{notes.name} is ready", said
    name = upload.get_attribute("data-document")
    expect(page.locator(f'#docs-table tr[data-document="{name}"] .badge')).to_have_text("Ready")
