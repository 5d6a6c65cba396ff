"""HTML main content on pages from several documentation generators.

Real pages: Sphinx (Python's `secrets`), rustdoc (`std::time::SystemTimeError`), DocBook (the
PostgreSQL manual's VACUUM), GNU Texinfo 6 (libffi's and bc's manuals from /usr/share/doc). Pages built to the generators' markup: MkDocs Material,
Docusaurus, Javadoc. On each, the page's own text is kept and the site around it is not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from amelia_rag.chunking import chunk_document
from amelia_rag.parsing import parse_html

PAGES = Path(__file__).parent / "fixtures" / "generated"


def parsed(name: str):  # type: ignore[no-untyped-def]
    return parse_html((PAGES / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("page", "kept", "dropped"),
    [
        (
            "sphinx_secrets.html",
            ["secrets.token_urlsafe([nbytes=None])", "Return a random URL-safe text string"],
            ["Table of Contents", "Next topic", "Previous topic", "This Page", "Quick search",
             "Report a Bug", "¶"],
        ),
        (
            "rustdoc_systemtimeerror.html",
            ["pub struct SystemTimeError", "An error returned from the duration_since"],
            ["Expand description", "Settings", "Help", "§", "Source\n"],
        ),
        (
            "docbook_sql_vacuum.html",
            ["VACUUM reclaims storage occupied by dead tuples", "SKIP_LOCKED"],
            ["Prev", "Next", "Submit correction", "Home"],
        ),
        (
            "mkdocs_material.html",
            ["Orbit reads its settings", "retried five times"],
            ["Installation guide", "Table of contents", "Edit this page", "Previous", "Made with",
             "¶"],
        ),
        (
            "docusaurus.html",
            ["HMAC-SHA256", "constant time"],
            ["Skip to main content", "Tutorial Intro", "Blog", "Edit this page", "Previous",
             "Built with Docusaurus"],
        ),
        (
            "javadoc.html",
            ["Class RetryPolicy", "two seconds doubled"],
            ["SEARCH:", "Help", "Use", "All rights reserved"],
        ),
        (
            # GNU Texinfo 6.8 (makeinfo), one node per page: /usr/share/doc/libffi8/html
            "texinfo6_libffi_the_basics.html",
            ["2.1 The Basics", "create an ffi_cif object", "ffi_prep_cif"],
            ["Next:", "Up:", "Simple Example", "[Index]"],
        ),
        (
            # GNU Texinfo 6.7, the whole manual on one page: /usr/share/doc/bc/bc.html
            "texinfo6_bc.html",
            ["bc is a language that supports arbitrary precision numbers", "BC_LINE_LENGTH"],
            ["Next:", "Previous:", "Up:", "[Contents]", "Table of Contents",
             "• Basic Elements"],
        ),
    ],
)  # fmt: skip
def test_only_the_main_content_is_indexed(page: str, kept: list[str], dropped: list[str]) -> None:
    doc = parsed(page)
    for words in kept:
        assert words in doc.text, words
    for words in dropped:
        assert words not in doc.text, words
        assert all(words not in " ".join(s.heading_path) for s in doc.sections), words


def test_definitions_are_sections_with_their_signature_in_the_heading_path() -> None:
    doc = parsed("sphinx_secrets.html")
    entry = next(
        s for s in doc.sections if s.heading_path[-1:] == ("secrets.token_urlsafe([nbytes=None])",)
    )
    assert entry.heading_path[-2] == "Generating tokens"
    text = doc.text[entry.start : entry.end]
    assert "URL-safe" in text and "token_hex" not in text  # one definition, not its neighbours
    vacuum = parsed("docbook_sql_vacuum.html")
    skip = next(s for s in vacuum.sections if s.heading_path[-1:] == ("SKIP_LOCKED",))
    assert skip.heading_path[-2] == "Parameters"
    assert "conflicting locks" in vacuum.text[skip.start : skip.end]


def test_heading_paths_carry_no_permalink_signs() -> None:
    for page in PAGES.glob("*.html"):
        for section in parse_html(page.read_text(encoding="utf-8")).sections:
            for heading in section.heading_path:
                assert not set(heading) & set("¶§\u200b"), (page.name, heading)


def test_a_long_section_returns_a_window_centred_on_the_chunk() -> None:
    doc = parsed("docbook_sql_vacuum.html")
    chunks = chunk_document(doc, 300, 60, passage_size=700)
    ends = {s.end for s in doc.sections}
    for chunk in chunks:
        section = doc.sections[chunk.section]
        assert section.start <= chunk.passage_start <= chunk.start
        if section.end - section.start <= 700:
            # The whole section, and the whole sections after it that fit (Synopsis, …).
            assert not doc.text[section.start : chunk.passage_start].strip()
            assert any(
                e >= section.end and not doc.text[chunk.passage_end : e].strip() for e in ends
            )
            assert chunk.passage_end - chunk.passage_start <= 700
        else:
            assert chunk.end <= chunk.passage_end <= section.end
            assert chunk.passage_end - chunk.passage_start <= 700


TEXINFO7 = """<html><head><meta name="Generator" content="makeinfo"></head><body>
<div class="section-level-extent" id="Widgets">
<div class="nav-panel"><p>Next: <a href="Gears.html">Gears</a>, Previous:
<a href="Bolts.html">Bolts</a>, Up: <a href="Parts.html">Parts</a> &nbsp;
[<a href="Index.html">Index</a>]</p></div>
<h3 class="section" id="Widgets-1"><span>2.1 Widgets<a class="copiable-link" href="#Widgets-1">
 &para;</a></span></h3>
<p>A widget turns once per second.</p>
<ul class="mini-toc"><li><a href="Small-widgets.html">Small widgets</a></li></ul>
</div></body></html>"""


def test_texinfo7_navigation_is_dropped_and_a_real_header_kept() -> None:
    """Texinfo 7's markup (no such page on the machine); a site's own `div.header` stays."""
    doc = parse_html(TEXINFO7)
    assert "A widget turns once per second." in doc.text
    for words in ("Next:", "Gears", "Bolts", "Small widgets", "Index", "¶"):
        assert words not in doc.text, words
    page = '<body><div class="header"><h1>Pump manual</h1></div><p>Prime the pump.</p></body>'
    assert "Pump manual" in parse_html(page).text
