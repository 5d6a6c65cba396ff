"""The main content of an HTML page: what a reader came for, without the site around it.

Generated documentation wraps every page in the same chrome — navigation bars, sidebars,
breadcrumbs, "previous/next" links, tables of contents, footers, permalink signs — and when that
chrome is indexed, the same words appear on every page and crowd out the real passages. The
page's own markup says where its content is, by convention:

1. `[role=main]`, `<main>` or `<article>` (HTML5; MkDocs, Javadoc, rustdoc, Docusaurus and
   Sphinx themes use them): the content is inside, and an `<article>` inside `<main>` is
   narrower still;
2. inside it (or in the whole body when a page has none of them), elements that are chrome by
   their tag (`nav`, `aside`, `footer`, forms) or by the class/id names the generators give them
   (Sphinx `sphinxsidebar`/`related`/`headerlink`, DocBook `navheader`/`navfooter`/`toc`,
   MkDocs `md-sidebar`/`md-footer`, Docusaurus `pagination-nav`/`theme-doc-toc-*`, rustdoc
   `sidebar`/`anchor`, Javadoc `top-nav`/`sub-nav`, …) are removed.
"""

from __future__ import annotations

import re
from typing import Any

# Tags that never hold page content.
CHROME_TAGS = {"nav", "aside", "footer", "form", "button", "select", "dialog", "rustdoc-search"}
# Class or id names generators give their chrome (compared whole, case-insensitively).
CHROME_NAMES = {
    # Sphinx (basic, alabaster, Read the Docs)
    "sphinxsidebar", "sphinxsidebarwrapper", "related", "headerlink", "wy-nav-side",
    "wy-nav-top", "rst-footer-buttons", "rst-versions", "wy-breadcrumbs", "footer",
    # DocBook XSL (PostgreSQL, many GNU manuals)
    "navheader", "navfooter", "toc",
    # MkDocs and Material for MkDocs
    "md-header", "md-sidebar", "md-footer", "md-nav", "md-search", "md-tabs",
    "md-content__button", "md-source-file",
    # Docusaurus
    "navbar", "pagination-nav", "theme-doc-toc-desktop", "theme-doc-toc-mobile",
    "theme-doc-breadcrumbs", "theme-doc-footer", "theme-edit-this-page", "hash-link",
    "table-of-contents",
    # rustdoc
    "sidebar", "sidebar-elems", "anchor", "src-link", "out-of-band", "rustdoc-breadcrumbs",
    "search-form", "mobile-topbar", "rightside", "src", "hideme",
    # Javadoc
    "top-nav", "sub-nav", "skip-nav", "flex-header", "bottom-nav", "legal-copy",
    # common names
    "breadcrumb", "breadcrumbs", "skip-link", "skip-to-content", "sr-only", "visually-hidden",
    "prev-next", "page-nav", "edit-on-github", "edit-this-page", "cookie-banner",
    "site-footer", "site-header", "site-nav", "sidenav", "side-nav", "permalink",
}  # fmt: skip
# Signs generators add to headings and definitions as permalinks.
PERMALINK_SIGNS = "¶§🔗\u200b"  # not "#": "C#" is a name
_EDGE_SIGNS = re.compile(f"^[\\s{PERMALINK_SIGNS}]+|[\\s{PERMALINK_SIGNS}]+$")


def clean_heading(title: str) -> str:
    """A heading or signature without its permalink sign ("Usage¶", "§Examples" → the words)."""
    return _EDGE_SIGNS.sub("", title)


def _names(tag: Any) -> set[str]:
    classes = tag.get("class") or []
    if isinstance(classes, str):
        classes = classes.split()
    names = {c.lower() for c in classes}
    ident = tag.get("id")
    if isinstance(ident, str):
        names.add(ident.lower())
    return names


def is_chrome(tag: Any) -> bool:
    """True for an element that is site chrome, not page content."""
    if tag.name in CHROME_TAGS:
        return True
    if tag.get("role") in ("navigation", "search", "banner", "contentinfo", "complementary"):
        return True
    if tag.get("aria-hidden") == "true" or tag.get("hidden") is not None:
        return True
    return bool(_names(tag) & CHROME_NAMES)


def main_content(soup: Any) -> Any:
    """The element holding the page's own content (the body, or the whole soup, if unmarked)."""
    from bs4 import Tag

    def text_size(tag: Tag) -> int:
        return len(tag.get_text(" ", strip=True))

    for selector in ("[role=main]", "main"):
        found = [t for t in soup.select(selector) if isinstance(t, Tag) and text_size(t)]
        if found:
            root = max(found, key=text_size)
            articles = [t for t in root.select("article") if text_size(t)]
            if articles:
                article = max(articles, key=text_size)
                # An <article> that is most of <main> is the content; a small one is a card.
                if text_size(article) >= 0.5 * text_size(root):
                    return article
            return root
    articles = [t for t in soup.select("article") if isinstance(t, Tag) and text_size(t)]
    if articles:
        return max(articles, key=text_size)
    body = soup.find("body")
    return body if isinstance(body, Tag) else soup
