"""`amelia docs ls` at 80 columns says how far a document's indexing has got (it said only
"indexing" before), and where a failed one stopped; the TUI's Documents tab shows the same."""

from __future__ import annotations

import io

from rich.console import Console

from amelia.v1 import rag_pb2
from amelia_cli.client import listing
from amelia_cli.commands.docs import DOCUMENT_COLUMNS, document_row
from amelia_cli.docstate import state_label

NAME = "documents/0d3c5a29-54a8-4be4-9b5f-0d2d2f6ad1a3"


def _document(state: int, embedded: int, error: str = "") -> rag_pb2.Document:
    return rag_pb2.Document(
        name=NAME,
        title="big.txt",
        type=rag_pb2.DOCUMENT_TYPE_TEXT,
        size_bytes=2_456_789,
        chunk_count=8008,
        embedded_chunk_count=embedded,
        state=state,
        index_error=error,
    )


def _printed(documents: list[rag_pb2.Document]) -> str:
    out = io.StringIO()
    listing(
        Console(file=out, width=80, color_system=None),
        DOCUMENT_COLUMNS,
        [document_row(d) for d in documents],
    )
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    return out.getvalue()


def test_docs_ls_at_80_columns_shows_indexing_progress() -> None:
    printed = _printed([_document(rag_pb2.DOCUMENT_STATE_INDEXING, 6784)])
    assert NAME in printed
    assert "indexing 84%" in printed and "6784/8008" in printed


def test_docs_ls_shows_where_a_failed_document_stopped_and_why() -> None:
    error = "indexing was interrupted 3 times in a row without progress"
    printed = " ".join(_printed([_document(rag_pb2.DOCUMENT_STATE_FAILED, 64, error)]).split())
    assert "failed at 64/8008" in printed and "without progress" in printed


def test_a_ready_document_reads_ready() -> None:
    assert state_label("DOCUMENT_STATE_READY", 8008, 8008) == "ready"
    assert state_label("DOCUMENT_STATE_INDEXING", 0, 0) == "indexing 0% 0/0"
