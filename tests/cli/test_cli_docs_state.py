"""`amelia docs ls` at 80 columns says how far a document's indexing has got (it said only
"indexing" before), on the document's line (QA s21 F13: `indexing 1%` / `1088/104000` folded
over two lines), and where a failed one stopped and why; the TUI's Documents tab shows the same."""

from __future__ import annotations

import io

from rich.console import Console

from amelia.v1 import rag_pb2
from amelia_cli.client import listing
from amelia_cli.commands.docs import DOCUMENT_COLUMNS, document_errors, document_row
from amelia_cli.docstate import state_brief, state_label

NAME = "documents/0d3c5a29-54a8-4be4-9b5f-0d2d2f6ad1a3"


def _document(
    state: int, embedded: int, error: str = "", chunks: int = 8008, title: str = "big.txt"
) -> rag_pb2.Document:
    return rag_pb2.Document(
        name=NAME,
        title=title,
        type=rag_pb2.DOCUMENT_TYPE_TEXT,
        size_bytes=2_456_789,
        chunk_count=chunks,
        embedded_chunk_count=embedded,
        state=state,
        index_error=error,
    )


def _printed(documents: list[rag_pb2.Document], width: int = 80) -> str:
    """What `amelia docs ls` prints of `documents` on a terminal `width` wide."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    listing(console, DOCUMENT_COLUMNS, [document_row(d) for d in documents])
    for line in document_errors(documents):
        console.print(line)
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    return out.getvalue()


def _row(printed: str) -> str:
    """The document's line; it must be its only one (nothing of it folded onto the next)."""
    lines = printed.splitlines()
    assert len(lines) == 3, printed  # header, rule, the row
    return lines[2].rstrip()


def test_docs_ls_at_80_columns_shows_indexing_progress_on_the_documents_line() -> None:
    printed = _printed([_document(rag_pb2.DOCUMENT_STATE_INDEXING, 6784)])
    assert _row(printed) == f"{NAME}   big.txt   indexing 84%"
    # Where there is room, the counts too.
    wide = _row(_printed([_document(rag_pb2.DOCUMENT_STATE_INDEXING, 6784)], 100))
    assert "   indexing 84% 6784/8008   " in wide, wide
    huge = _document(rag_pb2.DOCUMENT_STATE_INDEXING, 1088, chunks=104_000, title="a-long-name.txt")
    assert _row(_printed([huge])) == f"{NAME}   a-long-name.txt   indexing 1%"


def test_docs_ls_shows_where_a_failed_document_stopped_and_why() -> None:
    error = "indexing was interrupted 3 times in a row without progress"
    printed = _printed([_document(rag_pb2.DOCUMENT_STATE_FAILED, 64, error)])
    row, why = printed.split("\n", 3)[2:]
    assert row.rstrip() == f"{NAME}   big.txt   failed at 64/8008"
    assert " ".join(why.split()) == f"{NAME}: failed at 64/8008: {error}"


def test_a_state_in_brief_keeps_its_word_and_percent() -> None:
    assert state_brief("indexing 84% 6784/8008") == "indexing 84%"
    assert state_brief("failed at 64/8008") == "failed"
    assert state_brief("ready") == "ready"


def test_a_ready_document_reads_ready() -> None:
    assert state_label("DOCUMENT_STATE_READY", 8008, 8008) == "ready"
    assert state_label("DOCUMENT_STATE_INDEXING", 0, 0) == "indexing 0% 0/0"
