"""`amelia ingest`, `amelia search`, `amelia docs ls|rm`: the RAG service from a terminal."""

from __future__ import annotations

import asyncio
import glob
import os
import stat
import time
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import grpc
import typer
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from amelia.v1 import rag_pb2
from amelia_cli.client import Column, ago, fail, listing, rag, resource, said
from amelia_cli.consoles import console
from amelia_cli.docstate import state_brief, state_label
from amelia_cli.help_text import App
from amelia_cli.tui.passages import prose_flowing
from amelia_common.json_numbers import message_text
from amelia_common.settings import get_settings

docs_app = App(help="Documents in the RAG service.", no_args_is_help=True)

# Files `amelia ingest DIR` picks up; anything else must be named explicitly.
INGESTIBLE = {
    ".md",
    ".markdown",
    ".txt",
    ".rst",
    ".html",
    ".htm",
    ".pdf",
    ".py",
    ".js",
    ".ts",
    ".tsx",
    ".jsx",
    ".go",
    ".rs",
    ".java",
    ".c",
    ".h",
    ".cpp",
    ".hpp",
    ".rb",
    ".sh",
    ".sql",
    ".toml",
    ".yaml",
    ".yml",
    ".json",
    ".proto",
}
UPLOAD_PIECE = 1024 * 1024
TYPES: dict[str, rag_pb2.DocumentType.ValueType] = {
    t.name.removeprefix("DOCUMENT_TYPE_").lower(): rag_pb2.DocumentType.Value(t.name)
    for t in rag_pb2.DocumentType.DESCRIPTOR.values
}
MODES: dict[str, rag_pb2.SearchMode.ValueType] = {
    m.name.removeprefix("SEARCH_MODE_").lower(): rag_pb2.SearchMode.Value(m.name)
    for m in rag_pb2.SearchMode.DESCRIPTOR.values
}


def expand(paths: list[str]) -> list[Path]:
    """Files named, matched by a glob, or found under a folder (skipping hidden ones)."""
    found: list[Path] = []
    for raw in paths:
        matches = [Path(p) for p in glob.glob(raw, recursive=True)]
        if not matches:
            # A name that is there is taken as it is, glob characters and all (`notes[1].md`).
            if glob.has_magic(raw) and not os.path.lexists(raw):
                raise typer.BadParameter(f"{escaped(raw)}: the pattern matched no files")
            matches = [Path(raw)]
        for path in matches:
            if path.is_dir():
                found.extend(
                    p
                    for p in sorted(path.rglob("*"))
                    if p.is_file()
                    and p.suffix.lower() in INGESTIBLE
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                )
            elif path.is_file():
                found.append(path)
            else:
                raise typer.BadParameter(f"{escaped(str(path))}: {_not_ingestible(path)}")
    return list(dict.fromkeys(p.resolve() for p in found))


_SPECIAL_FILES = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_ingestible(path: Path) -> str:
    """Why a path named is neither a regular file nor a folder, saying what it is: a device or a
    FIFO exists, and is not read (reading /dev/zero never ends, a FIFO waits for a writer)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a symbolic link to nothing" if path.is_symlink() else "no such file or folder"
    except OSError as exc:
        return f"cannot be looked at ({exc.strerror})"
    kind = next((name for is_kind, name in _SPECIAL_FILES if is_kind(mode)), "")
    return f"not a regular file ({kind})" if kind else "not a regular file"


def escaped(name: str) -> str:
    """`name` with what the rag service cannot take as text, or a terminal would act on, as in
    a URI: control characters (a newline is legal in a POSIX file name) and bytes that are not
    UTF-8 percent-encoded (`a%0Ab.txt`)."""
    return "".join(
        quote(os.fsencode(c), safe="") if unicodedata.category(c) in ("Cc", "Cs") else c
        for c in name
    )


@dataclass
class Outcome:
    path: Path
    status: str
    chunks: int = 0
    seconds: float = 0.0
    error: str = ""


def _source(path: Path) -> rag_pb2.DocumentSource:
    """What `amelia ingest` says of a file: where it is, no title (the rag service titles it by
    its file name, as every client's document without a title; docs/rag.md). A path the service
    cannot take as text (a control character, bytes that are not UTF-8) is named by its
    `file://` URI alone, percent-encoded as URIs are (its identity, one per file), and titled by
    its file name so encoded: refused before, such a file could never be ingested."""
    uri = path.as_uri()
    name = str(path)
    if escaped(name) == name:
        return rag_pb2.DocumentSource(file_path=name, source_uri=uri)
    return rag_pb2.DocumentSource(source_uri=uri, title=escaped(path.name))


async def _ingest_one(stub: object, path: Path) -> Outcome:
    started = time.perf_counter()
    try:
        content = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:  # unreadable, or gone since it was listed
        return Outcome(path, "error", error=f"cannot be read: {exc.strerror or exc}")
    try:
        if len(content) <= get_settings().MAX_INLINE_DOCUMENT_BYTES:
            reply = await stub.IngestDocument(  # type: ignore[attr-defined]
                rag_pb2.IngestDocumentRequest(source=_source(path), content=content)
            )
        else:

            async def parts() -> AsyncIterator[rag_pb2.UploadDocumentRequest]:
                yield rag_pb2.UploadDocumentRequest(source=_source(path))
                for i in range(0, len(content), UPLOAD_PIECE):
                    yield rag_pb2.UploadDocumentRequest(content=content[i : i + UPLOAD_PIECE])

            reply = await stub.UploadDocument(parts())  # type: ignore[attr-defined]
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            raise
        return Outcome(path, "error", error=f"{exc.code().name}: {exc.details()}")
    return Outcome(path, ingested(reply), reply.document.chunk_count, time.perf_counter() - started)


OUTCOME_COLOURS = {"stored": "green", "refreshed": "yellow", "unchanged": "dim", "error": "red"}


def ingested(reply: rag_pb2.IngestDocumentResponse | rag_pb2.UploadDocumentResponse) -> str:
    """What an ingest did to the file's document: `unchanged` (nothing at all), `stored` (new
    content, or a failed indexing resumed: it is indexing), `refreshed` (the same content, not
    parsed or embedded again, but its source URI or metadata replaced by this ingest's — the
    reply's `unchanged` is false while the document is not sent back to indexing; one still
    indexing from an earlier ingest says `stored`, true of it too)."""
    if reply.unchanged:
        return "unchanged"
    indexing = reply.document.state == rag_pb2.DOCUMENT_STATE_INDEXING
    return "stored" if indexing else "refreshed"


async def _ingest(paths: list[Path], parallel: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    gate = asyncio.Semaphore(parallel)
    async with rag() as stub:
        # A bar only on a terminal: piped, rich would leave a blank line where it stood.
        bar = Progress(console=console, transient=True, disable=not console.is_terminal)
        with bar as progress:
            task = progress.add_task("ingesting", total=len(paths))

            async def one(path: Path) -> None:
                async with gate:
                    outcomes.append(await _ingest_one(stub, path))
                progress.advance(task)

            await asyncio.gather(*(one(p) for p in paths))
    return sorted(outcomes, key=lambda o: str(o.path))


def _shown(path: Path) -> str:
    """A path as short as it can be while still naming the file, on one line."""
    try:
        return escaped(str(path.relative_to(Path.cwd())))
    except ValueError:
        return escaped(str(path))


def ingest(
    paths: list[str] = typer.Argument(..., help="Files, folders or globs."),
    parallel: int = typer.Option(8, min=1, max=32, help="Files in flight at once."),
) -> None:
    """Store files, parsed and chunked; they are embedded in the background (unchanged files
    cost nothing)."""
    files = expand(paths)
    if not files:
        console.print("nothing to ingest")
        raise typer.Exit(1)
    try:
        outcomes = asyncio.run(_ingest(files, parallel))
    except grpc.aio.AioRpcError as exc:
        raise fail(exc) from exc
    # The table holds only short words and numbers, so the file's name keeps the room; why a
    # file failed (the server's words, maybe long) goes under it, literally.
    table = Table(title=f"{len(outcomes)} file{'' if len(outcomes) == 1 else 's'}")
    table.add_column("file", overflow="fold")
    for column in ("status", "chunks", "seconds"):
        table.add_column(column, no_wrap=True)
    for o in outcomes:
        colour = OUTCOME_COLOURS[o.status]
        table.add_row(
            Text(_shown(o.path)), Text(o.status, style=colour), str(o.chunks), f"{o.seconds:.2f}"
        )
    console.print(table)
    for o in outcomes:
        if o.error:
            console.print(said((f"{_shown(o.path)}: ", "red"), o.error))
    if any(o.status == "stored" for o in outcomes):
        console.print(
            "Stored: found by their words now, by meaning once embedded in the background"
            " (`amelia docs ls` shows each document's state).",
            style="dim",
        )
    if any(o.status == "refreshed" for o in outcomes):
        console.print(
            "Refreshed: the same content, not parsed or embedded again; its source and metadata"
            " are now this ingest's (`amelia ingest` sends no metadata: any it had is cleared).",
            style="yellow",
        )
    if any(o.status == "error" for o in outcomes):
        raise typer.Exit(1)


# The request fields `search` fills from what the person typed, as the rag service names them
# in its messages → the flag or argument (`client.in_cli_words`).
SEARCH_FLAGS = {"query": "QUERY", "top_k": "--top-k", "min_score": "--min-score"}


def search(
    query: str = typer.Argument(..., help="Question or keywords."),
    top_k: int = typer.Option(
        0, "--top-k", "-k", help="Hits (0: RAG_TOP_K of the settings).", show_default=False
    ),
    mode: str = typer.Option("hybrid", help="hybrid, vector or keyword."),
    min_score: float | None = typer.Option(None, help="Minimum cosine similarity for vector hits."),
    doc_type: list[str] = typer.Option([], "--type", help="Only these document types."),
) -> None:
    """Find the passages that answer a question, with where they come from."""
    if mode not in MODES or mode == "unspecified":
        raise typer.BadParameter(f"mode must be hybrid, vector or keyword, not {mode!r}")
    request = rag_pb2.SearchRequest(
        query=query,
        top_k=top_k,
        mode=MODES[mode],
        types=[_type(t) for t in doc_type],
    )
    if min_score is not None:
        request.min_score = min_score

    async def go() -> rag_pb2.SearchResponse:
        async with rag() as stub:
            reply: rag_pb2.SearchResponse = await stub.Search(request)
            return reply

    try:
        reply = asyncio.run(go())
    except grpc.aio.AioRpcError as exc:
        raise fail(exc, SEARCH_FLAGS) from exc
    if not reply.hits:
        console.print("no passages matched")
        return
    for i, hit in enumerate(reply.hits, 1):
        # Document text is printed literally: `f([x=None])` is not console markup.
        where = " › ".join(hit.heading_path) or (f"page {hit.page}" if hit.page else "")
        # The title may be cut to fit the rule; where it comes from wraps below it, whole.
        console.rule(Text(f"{i}. {hit.document_title}"), align="left")
        source = f"score {hit.score:.3f}  chars {hit.start_offset}-{hit.end_offset}  {hit.document}"
        console.print(Text(f"{where}  {source}" if where else source, style="dim"))
        console.print(Text(passage_shown(hit.content.strip(), hit.document_type)))


def passage_shown(content: str, document_type: int) -> str:
    """A passage as `amelia search` prints it: Markdown and text prose flowing to the terminal's
    width, and a PDF's too, its page layout's line breaks dropped (its ~90-column lines wrapped
    raggedly at 80: "…installed in" / "the packages directory as"), list items on their own
    lines; HTML and code as they are."""
    if document_type == rag_pb2.DOCUMENT_TYPE_PDF:
        # A layout line's trailing spaces are not a Markdown hard break.
        return prose_flowing("\n".join(line.rstrip() for line in content.split("\n")))
    if document_type in (rag_pb2.DOCUMENT_TYPE_MARKDOWN, rag_pb2.DOCUMENT_TYPE_TEXT):
        return prose_flowing(content)
    return content


def _type(name: str) -> rag_pb2.DocumentType.ValueType:
    if name.lower() not in TYPES or name.lower() == "unspecified":
        raise typer.BadParameter(
            f"unknown type {name!r}; one of {', '.join(sorted(set(TYPES) - {'unspecified'}))}"
        )
    return TYPES[name.lower()]


# On a narrow terminal the size goes first, then the type, the chunk count, the time; then the
# state's counts (`indexing 84%`): at 80 columns a 46-character name leaves the title and the
# state 31 cells, and the state folded over two lines (`indexing 1%` / `1088/104000`).
DOCUMENT_COLUMNS = (
    Column("name"),
    Column("title", wraps=True),
    Column("type", drop=3),
    Column("state", brief=state_brief),
    Column("chunks", drop=2),
    Column("bytes", drop=4),
    Column("updated", drop=1),
)


def _state(d: rag_pb2.Document, error: str = "") -> str:
    name = rag_pb2.DocumentState.Name(d.state)
    return state_label(name, d.embedded_chunk_count, d.chunk_count, error)


def document_row(d: rag_pb2.Document) -> tuple[str, ...]:
    """A document as a row of DOCUMENT_COLUMNS; why indexing failed is printed under the table
    (`document_errors`), in words, as `amelia ingest` prints why a file failed."""
    return (
        d.name,
        d.title,
        rag_pb2.DocumentType.Name(d.type).removeprefix("DOCUMENT_TYPE_").lower(),
        _state(d),
        str(d.chunk_count),
        str(d.size_bytes),
        ago(d.update_time),
    )


def document_errors(documents: list[rag_pb2.Document]) -> list[Text]:
    """Why each document whose indexing failed failed: `documents/…: failed at 64/8008: why`."""
    return [
        said((f"{d.name}: ", "red"), _state(d, d.index_error)) for d in documents if d.index_error
    ]


@docs_app.command("ls")
def ls(
    doc_type: list[str] = typer.Option([], "--type", help="Only these types."),
    limit: int = typer.Option(100, min=1, help="At most this many."),
) -> None:
    """List documents."""

    async def go() -> list[rag_pb2.Document]:
        found: list[rag_pb2.Document] = []
        token = ""
        async with rag() as stub:
            while len(found) < limit:
                reply = await stub.ListDocuments(
                    rag_pb2.ListDocumentsRequest(
                        page_size=min(limit - len(found), 1000),
                        page_token=token,
                        types=[_type(t) for t in doc_type],
                    )
                )
                found.extend(reply.documents)
                token = reply.next_page_token
                if not token:
                    break
        return found

    try:
        documents = asyncio.run(go())
    except grpc.aio.AioRpcError as exc:
        raise fail(exc) from exc
    listing(console, DOCUMENT_COLUMNS, [document_row(d) for d in documents], empty="no documents")
    for line in document_errors(documents):
        console.print(line)


@docs_app.command("rm")
def rm(names: list[str] = typer.Argument(..., help="Document names or ids.")) -> None:
    """Delete documents and their chunks."""

    async def go() -> None:
        async with rag() as stub:
            for name in names:
                await stub.DeleteDocument(
                    rag_pb2.DeleteDocumentRequest(name=resource("documents", name))
                )
                console.print(said(f"deleted {resource('documents', name)}"))

    try:
        asyncio.run(go())
    except grpc.aio.AioRpcError as exc:
        raise fail(exc) from exc


@docs_app.command("show")
def show(name: str = typer.Argument(..., help="Document name or id.")) -> None:
    """Show one document as JSON."""

    async def go() -> rag_pb2.GetDocumentResponse:
        async with rag() as stub:
            reply: rag_pb2.GetDocumentResponse = await stub.GetDocument(
                rag_pb2.GetDocumentRequest(name=resource("documents", name))
            )
            return reply

    try:
        reply = asyncio.run(go())
    except grpc.aio.AioRpcError as exc:
        raise fail(exc) from exc
    console.print_json(message_text(reply.document))
