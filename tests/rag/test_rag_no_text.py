"""One rule for a document with no text, whatever its type: what a reader would see of it holds
no characters but whitespace, and it is refused INVALID_ARGUMENT "document has no text: …",
nothing written (QA s21 F12: Markdown made only of empty headings, `# \\n## \\n`, was stored as a
document with one chunk `# \\n##`, while whitespace and HTML without visible text were refused)."""

from __future__ import annotations

import grpc
import pytest
from rag_helpers import Rag
from rag_pdf import make_pdf

from amelia.v1 import rag_pb2
from amelia_rag.parsing import InvalidDocumentError, parse

NO_TEXT = [
    # (title, content): each type's way of holding nothing to read
    ("h.md", b"# \n## \n"),
    ("rules.md", b"---\n***\n\n- \n"),
    ("comment.md", b"<!-- nothing to see -->\n\n[](https://example.org)\n"),
    ("blank.txt", b"  \n\n "),
    ("empty.html", b"<html><body><div> </div><script>x()</script></body></html>"),
    ("blank.pdf", make_pdf([[], []])),
]
SOME_TEXT = [
    ("title.md", b"# Kestrel\n"),
    ("alt.md", b"![a kestrel hovering](k.png)\n"),
    ("code.md", b"```\nx = 1\n```\n"),
    ("html.md", b"<div>hovers</div>\n"),
    ("hashes.txt", b"# \n## \n"),  # plain text: its characters are its text
]


@pytest.mark.parametrize(("title", "content"), NO_TEXT, ids=[t for t, _ in NO_TEXT])
async def test_a_document_with_no_text_is_refused_the_same_way_whatever_its_type(
    rag: Rag, title: str, content: bytes
) -> None:
    before = await rag.snapshot()
    request = rag_pb2.IngestDocumentRequest(
        source=rag_pb2.DocumentSource(title=title), content=content
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.IngestDocument(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert (err.value.details() or "").startswith("document has no text: "), err.value.details()
    assert await rag.snapshot() == before


@pytest.mark.parametrize(("title", "content"), SOME_TEXT, ids=[t for t, _ in SOME_TEXT])
def test_a_document_showing_any_text_is_parsed(title: str, content: bytes) -> None:
    kind = "text" if title.endswith(".txt") else "markdown"
    parsed = parse(content, kind, title)
    assert parsed.sections and parsed.text.strip()


def test_empty_headings_are_no_text_however_deep() -> None:
    with pytest.raises(InvalidDocumentError, match="the Markdown is only markup"):
        parse(b"# \n## \n### \n#### \n", "markdown", "h.md")
