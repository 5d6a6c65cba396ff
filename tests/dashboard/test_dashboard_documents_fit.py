"""The Documents screen fits the window (fresh-clone QA, session 11): on a phone it was 589 px
wide (Search button and top-k box off screen, the Upload card under the whole list); on a
desktop the table overflowed its card, hiding the Updated column and the Open/Delete buttons,
and sizes folded as "3.6 / KB". Now: no sideways scroll at 390 px (documents as cards, upload
before the list), and at 1280 px every column and button in view without scrolling."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
from dashboard_helpers import Mesh
from dashboard_pages import shot
from playwright.sync_api import Locator, Page, ViewportSize, expect

pytestmark = pytest.mark.slow

SIZES: dict[str, ViewportSize] = {
    "desktop": {"width": 1280, "height": 800},
    "phone": {"width": 390, "height": 844},
}


def _in_view(locator: Locator, width: int) -> None:
    expect(locator).to_be_visible()
    box = locator.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box


@pytest.mark.parametrize("size", list(SIZES))
def test_documents_screen_fits_with_its_buttons_in_view(
    size: str, page: Page, mesh: Mesh, artifacts: Path
) -> None:
    viewport = SIZES[size]
    page.set_viewport_size(viewport)
    tag = uuid.uuid4().hex[:8]
    title = f"installation-and-configuration-guide-for-the-heating-system-{tag}.md"
    text = f"# Heating {tag}\n\n" + "The boiler heats water for the radiators. " * 80
    stored = mesh.post(
        "/v1/documents",
        {
            "source": {
                "title": title,
                "sourceUri": f"https://docs.example.org/heating/{tag}/" + "manual/" * 12,
            },
            "content": base64.b64encode(text.encode()).decode(),
        },
    )["document"]
    page.goto("/#/documents")
    row = page.locator(f'#docs-table tr[data-document="{stored["name"]}"]')
    expect(row.locator(".badge")).to_have_text("Ready", timeout=120_000)
    width = viewport["width"]
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), (
        f"the page is {page.evaluate('document.documentElement.scrollWidth')} px wide"
    )
    # The table does not scroll sideways inside its card either.
    wrap = page.evaluate(
        "() => { const w = document.querySelector('#docs-table').parentElement;"
        " return [w.scrollWidth, w.clientWidth]; }"
    )
    assert wrap[0] <= wrap[1], f"the table is {wrap[0]} px wide in a {wrap[1]} px box"
    row.scroll_into_view_if_needed()
    _in_view(row.get_by_role("button", name=f"Open {title}"), width)
    _in_view(row.get_by_role("button", name=f"Delete {title}"), width)
    for control in ("#search-form button[type=submit]", "#search-topk", "#search-mode"):
        _in_view(page.locator(control), width)
    hint = page.locator("#search-form .field-hint")
    _in_view(hint, width)
    upload, docs = page.locator("#upload-title"), page.locator("#docs-title")
    upload_box, docs_box = upload.bounding_box(), docs.bounding_box()
    assert upload_box is not None and docs_box is not None
    # The upload card comes before the list (beside the search on a desktop).
    assert upload_box["y"] < docs_box["y"]
    if size == "desktop":
        _in_view(page.get_by_role("columnheader", name="Updated"), width)
        size_cell = row.locator("td").nth(4)
        _in_view(size_cell, width)
        # "3.6 KB" on one line, not "3.6 / KB".
        one_line = page.evaluate(
            "(td) => { const r = document.createRange(); r.selectNodeContents(td);"
            " return r.getClientRects().length; }",
            size_cell.element_handle(),
        )
        assert one_line == 1, f"the size folds over {one_line} lines"
    shot(page, artifacts, f"documents-fit-{size}")
    mesh.request("DELETE", f"/v1/{stored['name']}")
