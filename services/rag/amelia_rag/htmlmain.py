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
   `sidebar`/`anchor`, Javadoc `top-nav`/`sub-nav`, …) are removed;
3. GNU Texinfo's makeinfo puts no such markup around its pages, but heads every node with a
   navigation line, "Next: …, Previous: …, Up: … [Contents][Index]", in `div.header` (Texinfo 6)
   or `div.nav-panel` (Texinfo 7), and older makeinfo in `div.node`: such a block is chrome when
   its text is that line (a `div.header` elsewhere may be a page's real header). Its node menus
   (`section-toc`, `mini-toc`, `table.menu`), table of contents and copiable anchors go too.
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
    # GNU Texinfo (makeinfo 6 and 7); its navigation lines: TEXINFO_NAV_NAMES
    "nav-panel", "section-toc", "mini-toc", "copiable-anchor", "copiable-link",
    "contents-heading", "shortcontents", "shortcontents-heading",
}  # fmt: skip
# Blocks makeinfo writes its "Next: …, Previous: …, Up: …" line in; chrome when they hold it.
TEXINFO_NAV_NAMES = {"header", "nav-panel", "node"}
_TEXINFO_NAV_LINE = re.compile(r"\s*(Next|Previous|Prev|Up|Forward|Back)\s*:")
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
    names = _names(tag)
    if names & CHROME_NAMES:
        return True
    return _texinfo_chrome(tag, names)


def _texinfo_chrome(tag: Any, names: set[str]) -> bool:
    """makeinfo's chrome under names other sites use for content: a navigation line, a node
    menu (`table.menu`, Texinfo 6.7), the table of contents after its `contents-heading`."""
    if names & TEXINFO_NAV_NAMES:
        return bool(_TEXINFO_NAV_LINE.match(tag.get_text(" ", strip=True)))
    if tag.name == "table" and "menu" in names:
        return True
    if "contents" in names:
        heading = tag.find_previous_sibling(["h1", "h2"])
        return heading is not None and "contents-heading" in _names(heading)
    return False


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
