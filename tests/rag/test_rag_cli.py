"""`amelia ingest`, `amelia search` and `amelia docs ls` as a person runs them: the real CLI
process on an 80-column terminal against a real rag service (QA s21 F5, F7, F13)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from rag_pdf import make_pdf

from amelia.v1 import rag_pb2, rag_pb2_grpc

WIDTH = 80


async def amelia(address: str, cwd: Path, *args: str) -> tuple[int, str, str]:
    """`amelia ARGS` at COLUMNS=80 with the rag service at `address`: exit code, stdout,
    stderr (off the event loop: the service answers from this process)."""
    env = {
        **os.environ,
        "RAG_ADDRESS": address,
        "AMELIA_DATA_DIR": str(cwd / "no-mesh-here"),
        "COLUMNS": str(WIDTH),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "amelia_cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout, done.stderr


def words(shown: str) -> str:
    """What a table shows, its rules and borders left out, spaces collapsed."""
    return " ".join(shown.translate({ord(c): " " for c in "│┃"}).split())


@pytest.fixture
async def stub(rag_address: str) -> AsyncIterator[rag_pb2_grpc.RagServiceStub]:
    async with grpc.aio.insecure_channel(rag_address) as channel:
        yield rag_pb2_grpc.RagServiceStub(channel)


async def _document_with(stub: rag_pb2_grpc.RagServiceStub, word: str) -> rag_pb2.Document:
    """The one document holding `word` (found by its words: at once, embedded or not)."""
    reply = await stub.Search(
        rag_pb2.SearchRequest(query=word, mode=rag_pb2.SEARCH_MODE_KEYWORD, top_k=5)
    )
    [name] = {hit.document for hit in reply.hits}
    found = await stub.GetDocument(rag_pb2.GetDocumentRequest(name=name))
    return found.document


async def test_a_file_whose_name_holds_a_newline_is_ingested_by_its_uri(
    rag_address: str, stub: rag_pb2_grpc.RagServiceStub, tmp_path: Path
) -> None:
    """Legal on POSIX, refused by the service as a file_path (a control character): sent as
    its percent-encoded file:// URI, titled by its name so encoded, shown so on one line."""
    path = tmp_path / "kestrel\nnotes.md"
    path.write_text("# Kestrel notes\n\nThe windhover kestrel hangs over the verge.\n")
    code, out, err = await amelia(rag_address, tmp_path, "ingest", str(path))
    assert code == 0, out + err
    assert "kestrel%0Anotes.md stored 1" in words(out), out
    document = await _document_with(stub, "windhover")
    assert document.title == "kestrel%0Anotes.md"
    assert (document.file_path, document.source_uri) == ("", path.as_uri())
    assert document.source_uri.endswith("/kestrel%0Anotes.md")

    code, out, err = await amelia(rag_address, tmp_path, "ingest", str(tmp_path / "*.md"))
    assert code == 0 and "kestrel%0Anotes.md unchanged" in words(out), out + err

    latin1 = tmp_path / os.fsdecode(b"caf\xe9-kestrel.md")  # a name that is not UTF-8
    latin1.write_text("# Cafe\n\nA hobby falcon, not a kestrel, over the quillwort.\n")
    code, out, err = await amelia(rag_address, tmp_path, "ingest", str(latin1))
    assert code == 0 and "caf%E9-kestrel.md" in out, out + err
    assert (await _document_with(stub, "quillwort")).title == "caf%E9-kestrel.md"


async def test_a_top_k_out_of_range_names_0_to_100(rag_address: str, tmp_path: Path) -> None:
    """Named as the flag typed (QA: the message named the request's `top_k`)."""
    code, out, err = await amelia(rag_address, tmp_path, "search", "kestrel", "-k", "-1")
    assert code == 1, out + err
    assert "INVALID_ARGUMENT: --top-k -1 is out of range: use 0..100 (0: the service's" in err
    code, out, err = await amelia(rag_address, tmp_path, "search", "kestrel", "--min-score", "2")
    assert code == 1, out + err
    assert "INVALID_ARGUMENT: --min-score 2.0 is out of range: use -1..1" in err, err


# A PDF's own lines: about 90 columns, more than the terminal's 80.
PDF_LINES = [
    "The bittern booms from the reed bed at dusk, and the sound carries across the whole fen",
    "for miles on a still evening; the packages of reeds cut in winter are stacked in the yard",
    "beside the sluice, where the warden keeps the keys, the logbook and the spare waders for",
    "visitors who walk out along the boardwalk to the hide at the far end of the marsh.",
]


async def test_a_pdf_passage_flows_at_80_columns(rag_address: str, tmp_path: Path) -> None:
    """Its layout's line breaks go, so the terminal wraps whole lines; before, each ~90-column
    line wrapped into a full one and a stub ("…the whole fen" / "for miles")."""
    (tmp_path / "fen.pdf").write_bytes(make_pdf([PDF_LINES], title="The fen"))
    code, out, err = await amelia(rag_address, tmp_path, "ingest", str(tmp_path / "fen.pdf"))
    assert code == 0, out + err
    code, out, err = await amelia(
        rag_address, tmp_path, "search", "bittern booms", "--mode", "keyword", "-k", "1"
    )
    assert code == 0, out + err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= WIDTH, out
    start = next(i for i, line in enumerate(lines) if " chars " in line) + 1
    passage = lines[start:]
    assert " ".join(passage).split() == " ".join(PDF_LINES).split(), out
    assert all(len(line) > WIDTH - 15 for line in passage[:-1]), out


async def test_docs_ls_keeps_a_documents_state_on_its_line_at_80_columns(
    rag_address: str, tmp_path: Path
) -> None:
    """While a document is indexing its state read `indexing 3%` / `40/1200` on two lines; at 80
    columns the counts go (`amelia docs show`, a wider terminal), the state stays whole."""
    sentences = (f"Survey line {i} counts {i % 97} kestrels over the fen. " for i in range(14000))
    (tmp_path / "big-survey.txt").write_text("".join(sentences))
    code, out, err = await amelia(rag_address, tmp_path, "ingest", str(tmp_path / "big-survey.txt"))
    assert code == 0, out + err
    try:
        code, listed, err = await amelia(rag_address, tmp_path, "docs", "ls", "--limit", "1000")
        assert code == 0, listed + err
        assert max(len(line) for line in listed.splitlines()) <= WIDTH, listed
        row = next(line.rstrip() for line in listed.splitlines() if "big-survey" in line)
        assert re.search(
            r"^documents/[0-9a-f-]{36}\s+big-survey\.txt\s+(indexing \d+%|ready)$", row
        )
        assert not re.search(r"^\s+\d+/\d+\s*$", listed, re.MULTILINE), listed
    finally:
        name = re.search(r"documents/[0-9a-f-]{36}(?=\s+big-survey)", listed)
        if name:  # stop its embedding: other suites share this machine
            await amelia(rag_address, tmp_path, "docs", "rm", name.group(0))


async def test_ingest_says_refreshed_when_it_cleared_a_documents_metadata(
    rag_address: str, stub: rag_pb2_grpc.RagServiceStub, tmp_path: Path
) -> None:
    """QA F6: a file uploaded with metadata (the dashboard, HTTP), then ingested again as it
    is: `amelia ingest` sends no metadata, so the document's is cleared; it said `unchanged`."""
    path = tmp_path / "curlew.md"
    path.write_text("# Curlew\n\nThe curlew calls over the saltmarsh at first light.\n")
    source = rag_pb2.DocumentSource(file_path=str(path.resolve()))
    source.metadata.update({"survey": "estuary"})
    first = await stub.IngestDocument(
        rag_pb2.IngestDocumentRequest(source=source, content=path.read_bytes())
    )
    # Indexed, as a document uploaded earlier is (one still indexing then says `stored`).
    request = rag_pb2.GetDocumentRequest(name=first.document.name)
    async with asyncio.timeout(120):
        while True:
            found = await stub.GetDocument(request)
            if found.document.state == rag_pb2.DOCUMENT_STATE_READY:
                break
            await asyncio.sleep(0.1)
    code, out, err = await amelia(rag_address, tmp_path, "ingest", str(path))
    assert code == 0, out + err
    assert "curlew.md refreshed 1" in words(out), out
    assert "any it had is cleared" in words(out), out
    found = await stub.GetDocument(rag_pb2.GetDocumentRequest(name=first.document.name))
    assert dict(found.document.metadata) == {}
    code, out, err = await amelia(rag_address, tmp_path, "ingest", str(path))
    assert code == 0 and "curlew.md unchanged 1" in words(out), out + err
    assert "Refreshed" not in out, out
