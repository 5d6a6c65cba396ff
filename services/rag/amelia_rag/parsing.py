"""Bytes in, text with structure out: type detection, decoding, and one parser per document type.

Every parser returns a `ParsedDocument`: the text that chunk offsets refer to, and `Section`s
(ranges of that text with a heading path and a page) that chunks never cross. Markdown, plain
text and code keep the source text as is (offsets are offsets into the file); HTML and PDF
offsets are into the extracted text. Anything that cannot be read raises `InvalidDocumentError`
with a message that names the problem; the service turns it into INVALID_ARGUMENT.
"""

from __future__ import annotations

import ast
import codecs
import io
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from amelia_rag.htmlmain import clean_heading, is_chrome, main_content

# Bump when parsing or chunking changes what is produced, so unchanged files are re-indexed.
PARSER_VERSION = 3  # 3: GNU Texinfo navigation lines, menus and contents dropped

MARKDOWN_EXTENSIONS = {".md", ".markdown", ".mdx", ".mkd", ".mdown"}
HTML_EXTENSIONS = {".html", ".htm", ".xhtml"}
TEXT_EXTENSIONS = {".txt", ".text", ".rst", ".log", ".csv", ".tsv", ".adoc", ".org", ""}
CODE_LANGUAGES = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".swift": "swift",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    ".lua": "lua",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".sql": "sql",
    ".proto": "protobuf",
    ".toml": "toml",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".ini": "ini",
    ".cfg": "ini",
    ".css": "css",
    ".scss": "css",
    ".vue": "vue",
    ".svelte": "svelte",
    ".ex": "elixir",
    ".exs": "elixir",
    ".erl": "erlang",
    ".hs": "haskell",
    ".ml": "ocaml",
    ".r": "r",
    ".jl": "julia",
    ".dart": "dart",
    ".zig": "zig",
    ".tf": "terraform",
    ".mk": "make",
}
CODE_FILE_NAMES = {"makefile": "make", "dockerfile": "docker", "justfile": "make"}
# Formats we recognise but cannot read: named in the error instead of "not UTF-8".
BINARY_EXTENSIONS = {
    ".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".ico", ".tif", ".tiff", ".heic",
    ".zip", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".tar", ".zst",
    ".exe", ".dll", ".so", ".dylib", ".bin", ".o", ".a", ".class", ".jar", ".pyc", ".wasm",
    ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".odt", ".ods", ".odp", ".epub", ".rtf",
    ".mp3", ".mp4", ".wav", ".flac", ".ogg", ".avi", ".mov", ".mkv", ".webm",
    ".woff", ".woff2", ".ttf", ".otf", ".sqlite", ".db", ".parquet", ".pkl", ".npy",
}  # fmt: skip
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x7fELF", "an executable"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office document"),
)

TYPES = ("pdf", "markdown", "text", "html", "code", "web_page")


class InvalidDocumentError(ValueError):
    """The content cannot be ingested; the message says why, for the person who sent it."""


def no_text(why: str) -> InvalidDocumentError:
    """The one refusal of a document a reader would see no text in, whatever its type: only
    whitespace, HTML with no visible text, a PDF without a text layer, Markdown that is only
    markup. Each parser says what a reader sees of its type; the words are the same."""
    return InvalidDocumentError(f"document has no text: {why}")


@dataclass(frozen=True)
class Section:
    """A range of the parsed text that chunks stay inside (a heading's body, a page, a def)."""

    start: int
    end: int
    heading_path: tuple[str, ...] = ()
    page: int = 0


@dataclass
class ParsedDocument:
    """The text chunk offsets refer to, its sections, and what parsing learned."""

    text: str
    type: str
    sections: list[Section]
    title: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


# Type detection --------------------------------------------------------------------------


def name_of(file_path: str, source_uri: str, title: str) -> str:
    """The file name type detection looks at: the path's, else the URI path's, else the title."""
    if file_path:
        return PurePosixPath(file_path.replace("\\", "/")).name
    if source_uri:
        path = urlparse(source_uri).path
        if path:
            return PurePosixPath(path).name
    return title


def extension(name: str) -> str:
    return PurePosixPath(name).suffix.lower()


def detect_type(name: str, content: bytes, *, web: bool = False) -> str:
    """The document type from the file name, else from the content."""
    ext = extension(name)
    lower = name.lower()
    if ext == ".pdf" or content.startswith(b"%PDF-"):
        return "pdf"
    _reject_binary(ext, content)
    if ext in MARKDOWN_EXTENSIONS:
        return "markdown"
    if ext in HTML_EXTENSIONS:
        return "web_page" if web else "html"
    if ext in CODE_LANGUAGES or lower in CODE_FILE_NAMES:
        return "code"
    head = content[:1024].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head[:200]:
        return "web_page" if web else "html"
    if ext in TEXT_EXTENSIONS:
        if _looks_like_markdown(content[:8192]):
            return "markdown"
        return "text"
    # An extension we do not know, but text content: read it as text.
    return "text"


def _reject_binary(ext: str, content: bytes) -> None:
    if ext in BINARY_EXTENSIONS:
        raise InvalidDocumentError(
            f"unsupported file type '{ext}': Amelia ingests Markdown, plain text, HTML, "
            f"PDF and source code"
        )
    for magic, what in _MAGIC:
        if content.startswith(magic):
            raise InvalidDocumentError(
                f"unsupported content: this is {what}; Amelia ingests Markdown, plain text, "
                f"HTML, PDF and source code"
            )


_MD_HINT = re.compile(rb"^(#{1,6} \S|```|\* \S|- \S|\d+\. \S)", re.MULTILINE)


def _looks_like_markdown(head: bytes) -> bool:
    return len(_MD_HINT.findall(head)) >= 2 and bool(re.search(rb"^#{1,6} \S", head, re.M))


def language_of(name: str) -> str:
    ext = extension(name)
    return CODE_LANGUAGES.get(ext) or CODE_FILE_NAMES.get(name.lower(), "text")


# Decoding --------------------------------------------------------------------------------


def decode_text(content: bytes) -> str:
    """UTF-8 (a UTF-8 or UTF-16 byte-order mark is honoured); anything else is refused."""
    if content.startswith(codecs.BOM_UTF8):
        content = content[len(codecs.BOM_UTF8) :]
    elif content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return _check_text(content.decode("utf-16"))
        except UnicodeDecodeError as exc:
            raise InvalidDocumentError(f"content is not valid UTF-16 text: {exc.reason}") from exc
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidDocumentError(
            f"content is not UTF-8 text: byte 0x{content[exc.start]:02x} at offset {exc.start} "
            f"cannot be decoded (binary file, or another encoding?)"
        ) from exc
    return _check_text(text)


def _check_text(text: str) -> str:
    nul = text.find("\x00")
    if nul >= 0:
        raise InvalidDocumentError(
            f"content has a NUL character at offset {nul}: it is binary, not text"
        )
    if not text.strip():
        raise no_text("only whitespace")
    return text


# Parsing ---------------------------------------------------------------------------------


def parse(content: bytes, doc_type: str, name: str) -> ParsedDocument:
    """Parse `content` as `doc_type`; `name` (the file name) picks a code language. A document
    nested deeper than a parser can follow is refused as the sender's input, never INTERNAL."""
    try:
        return _parse(content, doc_type, name)
    except RecursionError:
        raise InvalidDocumentError(
            f"the {doc_type} document nests too deeply to be read; flatten it and send it again"
        ) from None


def _parse(content: bytes, doc_type: str, name: str) -> ParsedDocument:
    if not content:
        raise InvalidDocumentError("document is empty (0 bytes)")
    if doc_type == "pdf":
        return parse_pdf(content)
    text = decode_text(content)
    if doc_type == "markdown":
        return parse_markdown(text)
    if doc_type in ("html", "web_page"):
        parsed = parse_html(text)
        parsed.type = doc_type
        return parsed
    if doc_type == "code":
        return parse_code(text, language_of(name))
    if doc_type == "text":
        return ParsedDocument(text, "text", [Section(0, len(text))])
    raise InvalidDocumentError(f"unknown document type {doc_type!r}")


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts.extend(m.end() for m in re.finditer(r"\n", text))
    return starts


def _sections_from_boundaries(
    text: str, boundaries: list[tuple[int, tuple[str, ...]]], page: int = 0
) -> list[Section]:
    """Sections between consecutive boundary offsets; blank ones are dropped."""
    sections = []
    for i, (start, path) in enumerate(boundaries):
        end = boundaries[i + 1][0] if i + 1 < len(boundaries) else len(text)
        if end > start and text[start:end].strip():
            sections.append(Section(start, end, path, page))
    return sections


def parse_markdown(text: str) -> ParsedDocument:
    """Sections per heading (any level), each with the path of headings above it.

    A heading with no body of its own (directly followed by a sub-heading) is kept with the
    next section rather than becoming a chunk that is only a title.
    """
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    if not any(_shows_text(tok) for tok in tokens):
        raise no_text("the Markdown is only markup (empty headings, rules, empty list items)")
    lines = _line_starts(text)
    headings: list[tuple[int, int, int, str]] = []  # (line, end line, level, title)
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map is not None:
            inline = tokens[i + 1]
            title = (
                "".join(
                    c.content for c in (inline.children or []) if c.type in ("text", "code_inline")
                ).strip()
                or inline.content.strip()
            )
            headings.append((tok.map[0], tok.map[1], int(tok.tag[1:]), title))

    def offset(line: int) -> int:
        return lines[line] if line < len(lines) else len(text)

    boundaries: list[tuple[int, tuple[str, ...]]] = [(0, ())]
    stack: list[tuple[int, str]] = []
    doc_title = ""
    pending: int | None = None  # start of a heading that had no body yet
    for n, (line, end_line, level, title) in enumerate(headings):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        if level == 1 and not doc_title:
            doc_title = title
        start = offset(line) if pending is None else pending
        next_line = headings[n + 1][0] if n + 1 < len(headings) else len(lines)
        body = text[offset(end_line) : offset(next_line)]
        pending = start if not body.strip() and n + 1 < len(headings) else None
        if pending is None:
            boundaries.append((start, tuple(t for _, t in stack)))
    return ParsedDocument(
        text, "markdown", _sections_from_boundaries(text, boundaries), title=doc_title
    )


_HTML_TAG = re.compile(r"<!--.*?-->|<[^>]*>", re.DOTALL)


def _shows_text(token: Any) -> bool:
    """Whether a Markdown token shows a reader any text: words (a link's, an image's alt text
    too), code, or an HTML block's text between its tags; not the markup of an empty heading
    (`# `), a rule or an empty list item (QA s21: `# \\n## \\n` was stored as a chunk `# \\n##`)."""
    if token.type in ("text", "code_inline", "fence", "code_block"):
        return bool(token.content.strip())
    if token.type in ("html_block", "html_inline"):
        return bool(_HTML_TAG.sub("", token.content).strip())
    return any(_shows_text(child) for child in token.children or ())


_HTML_SKIP = {
    "script", "style", "noscript", "template", "head", "svg", "iframe", "canvas", "object",
}  # fmt: skip
_HTML_BLOCK = {
    "p", "div", "section", "article", "header", "main", "aside", "li", "ul", "ol", "table",
    "tr", "td", "th", "pre", "blockquote", "br", "hr", "dl", "dt", "dd", "figure",
    "figcaption", "form", "h1", "h2", "h3", "h4", "h5", "h6", "body", "html", "caption",
    "details", "summary", "address",
}  # fmt: skip
# A <dl> whose entries are definitions (API members, configuration parameters, options): each
# entry becomes a section of its own, with its signature in the heading path.
_DEFINITION_LISTS = {
    "variablelist", "py", "c", "cpp", "js", "rst", "std", "describe", "function", "class",
    "method", "attribute", "exception", "data", "option", "envvar", "glossary", "property",
}  # fmt: skip
MAX_SIGNATURE_CHARS = 200
# Elements nested deeper than this are read as plain text of the element at that depth (as
# browsers' parsers fold elements past 512 levels): reading a page then needs no more recursion
# than this — 1,000 nested `div`s were an INTERNAL (RecursionError).
MAX_HTML_DEPTH = 256
_HEADING = re.compile(r"^h([1-6])$")
_SPACES = re.compile(r"\s+")


class _TextBuilder:
    """Accumulates extracted text, collapsing whitespace and separating blocks by a blank line."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0

    @property
    def tail(self) -> str:
        return "".join(self.parts[-2:])[-2:]

    def emit(self, s: str) -> None:
        if s:
            self.parts.append(s)
            self.length += len(s)

    def space(self) -> None:
        if self.length and not self.tail[-1:].isspace():
            self.emit(" ")

    def block(self) -> None:
        """End the current block: the next text starts after a blank line."""
        while self.parts:
            last = self.parts[-1]
            stripped = last.rstrip(" \t")
            if stripped == last:
                break
            self.length -= len(last) - len(stripped)
            if stripped:
                self.parts[-1] = stripped
                break
            self.parts.pop()
        if not self.length or self.tail.endswith("\n\n"):
            return
        self.emit("\n" if self.tail.endswith("\n") else "\n\n")

    def text(self) -> str:
        return "".join(self.parts)


def _is_definition_list(dl: Any) -> bool:
    classes = dl.get("class") or []
    if any(c.lower() in _DEFINITION_LISTS for c in classes):
        return True
    return any(dt.get("id") for dt in dl.find_all("dt", recursive=False))


def parse_html(text: str) -> ParsedDocument:
    """The page's main content as text, blocks separated by blank lines (see htmlmain.py).

    Sections start at each h1–h6 and at each entry of a definition list (`dl/dt/dd`: API
    members, configuration parameters), whose signature joins the heading path.
    """
    from bs4 import BeautifulSoup, NavigableString, Tag
    from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

    soup = BeautifulSoup(text, "html.parser")
    out = _TextBuilder()
    boundaries: list[tuple[int, tuple[str, ...]]] = [(0, ())]
    stack: list[tuple[int, str]] = []
    definitions: list[str] = []
    title_tag = soup.find("title")
    doc_title = title_tag.get_text(" ", strip=True) if isinstance(title_tag, Tag) else ""

    def path() -> tuple[str, ...]:
        return (*(t for _, t in stack), *definitions)

    def label(tag: Tag) -> str:
        return clean_heading(_SPACES.sub(" ", _visible_text(tag)))

    def definition_list(dl: Tag, pre: bool) -> None:
        signature: list[str] = []
        for child in dl.children:
            if not isinstance(child, Tag):
                continue
            if child.name == "dt":
                out.block()
                if not signature:
                    boundaries.append((out.length, path()))
                signature.append(label(child))
                walk(child, pre)
                out.block()
            elif child.name == "dd":
                name = " / ".join(s for s in signature if s)[:MAX_SIGNATURE_CHARS]
                if signature and name:
                    # The entry's section: its signature is the last heading of its path.
                    start, _ = boundaries[-1]
                    boundaries[-1] = (start, (*path(), name))
                    definitions.append(name)
                out.block()
                walk(child, pre)
                out.block()
                if signature and name:
                    definitions.pop()
                signature = []
                boundaries.append((out.length, path()))
            elif not is_chrome(child):
                walk(child, pre)

    depth = 0

    def walk(node: Tag, pre: bool) -> None:
        nonlocal depth
        if depth >= MAX_HTML_DEPTH:
            out.space()
            out.emit(node.get_text() if pre else _SPACES.sub(" ", node.get_text(" ")))
            return
        depth += 1
        try:
            walk_children(node, pre)
        finally:
            depth -= 1

    def walk_children(node: Tag, pre: bool) -> None:
        nonlocal doc_title
        for child in node.children:
            if isinstance(child, (Comment, Declaration, Doctype, ProcessingInstruction)):
                continue
            if isinstance(child, NavigableString):
                s = str(child)
                if pre:
                    out.emit(s)
                else:
                    collapsed = _SPACES.sub(" ", s)
                    if collapsed.startswith(" "):
                        out.space()
                        collapsed = collapsed.lstrip()
                    out.emit(collapsed)
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name.lower()
            if name in _HTML_SKIP or is_chrome(child):
                continue
            heading = _HEADING.match(name)
            if heading:
                level = int(heading.group(1))
                title = label(child)
                out.block()
                if title:
                    while stack and stack[-1][0] >= level:
                        stack.pop()
                    stack.append((level, title))
                    if level == 1 and not doc_title:
                        doc_title = title
                    boundaries.append((out.length, path()))
                    out.emit(title)
                out.block()
                continue
            if name == "br":
                out.emit("\n")
                continue
            if name == "dl" and _is_definition_list(child):
                out.block()
                definition_list(child, pre)
                out.block()
                continue
            is_block = name in _HTML_BLOCK
            if is_block:
                out.block()
            walk(child, pre or name in ("pre", "textarea"))
            if is_block:
                out.block()

    walk(main_content(soup), False)
    extracted = out.text().rstrip()
    if not extracted.strip():
        raise no_text("the HTML shows no visible text")
    # Boundaries past the end (a trailing empty heading) collapse into the last section.
    boundaries = [(min(b, len(extracted)), p) for b, p in boundaries]
    return ParsedDocument(
        extracted,
        "html",
        _fold_bare_headings(extracted, _sections_from_boundaries(extracted, boundaries)),
        title=clean_heading(doc_title),
    )


def _fold_bare_headings(text: str, sections: list[Section]) -> list[Section]:
    """A section that is only its heading joins the next one (as its first line)."""
    out: list[Section] = []
    pending: int | None = None
    for i, section in enumerate(sections):
        start = section.start if pending is None else pending
        body = text[section.start : section.end].strip()
        bare = bool(section.heading_path) and body == section.heading_path[-1]
        if bare and i + 1 < len(sections):
            pending = start
            continue
        pending = None
        out.append(Section(start, section.end, section.heading_path, section.page))
    return out


def _visible_text(tag: Any, depth: int = 0) -> str:
    """A heading's or signature's text without the chrome inside it (permalink anchors)."""
    from bs4 import NavigableString, Tag
    from bs4.element import Comment

    if depth >= MAX_HTML_DEPTH:
        return str(tag.get_text())
    parts: list[str] = []
    for child in tag.children:
        if isinstance(child, Comment):
            continue
        if isinstance(child, NavigableString):
            parts.append(str(child))
        elif isinstance(child, Tag) and child.name not in _HTML_SKIP and not is_chrome(child):
            parts.append(_visible_text(child, depth + 1))
    return "".join(parts)


def parse_pdf(content: bytes) -> ParsedDocument:
    """Text page by page (pypdf); each page is a section with its page number."""
    from pypdf import PdfReader

    if b"%PDF-" not in content[:1024]:
        raise InvalidDocumentError("not a PDF: the content has no '%PDF-' header")
    pypdf_log = logging.getLogger("pypdf")
    previous = pypdf_log.level
    pypdf_log.setLevel(logging.ERROR)  # its warnings about sloppy files are noise here
    try:
        reader = PdfReader(io.BytesIO(content), strict=False)
        if reader.is_encrypted:
            try:
                reader.decrypt("")
                pages = [p.extract_text() or "" for p in reader.pages]
            except Exception as exc:
                raise InvalidDocumentError("PDF is encrypted with a password") from exc
        else:
            pages = [p.extract_text() or "" for p in reader.pages]
        meta_title = ""
        try:
            if reader.metadata is not None and reader.metadata.title:
                meta_title = _printable(str(reader.metadata.title))
        except Exception:  # noqa: BLE001 - a broken info dictionary is not worth failing for
            meta_title = ""
    except InvalidDocumentError:
        raise
    except Exception as exc:
        raise InvalidDocumentError(f"corrupt PDF: {exc or type(exc).__name__}") from exc
    finally:
        pypdf_log.setLevel(previous)
    if not pages:
        raise InvalidDocumentError("corrupt PDF: no pages found")
    parts: list[str] = []
    sections: list[Section] = []
    length = 0
    for number, page_text in enumerate(pages, start=1):
        page_text = page_text.replace("\x00", " ")
        if not page_text.strip():
            continue
        if parts:
            parts.append("\n\n")
            length += 2
        sections.append(Section(length, length + len(page_text), (), number))
        parts.append(page_text)
        length += len(page_text)
    if not sections:
        raise no_text("the PDF has no extractable text (scanned images need OCR before ingesting)")
    return ParsedDocument(
        "".join(parts), "pdf", sections, title=meta_title, meta={"pages": len(pages)}
    )


def _printable(text: str) -> str:
    """A title from a file's own metadata: no control characters (PostgreSQL refuses NUL)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:500]


# Code ------------------------------------------------------------------------------------

_DEFINITION = re.compile(
    r"^(?:export\s+)?(?:default\s+)?(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?"
    r"(?:(?:public|private|protected|internal|static|abstract|final|sealed|open|override|"
    r"inline|extern|unsafe|virtual)\s+)*"
    r"(?:function\*?|class|interface|struct|enum|trait|impl|fn|func|def|type|module|object|"
    r"record|message|service|union|protocol|extension|macro_rules!|CREATE\s+(?:OR\s+REPLACE\s+)?"
    r"(?:TABLE|VIEW|FUNCTION|INDEX|PROCEDURE))\b",
    re.IGNORECASE,
)
# CPython 3.11's parser is not safe to run from several threads at once ("AST constructor
# recursion depth mismatch"), and documents are parsed in worker threads concurrently.
_AST_LOCK = threading.Lock()
_COMMENT_LINE = re.compile(r"^\s*(#|//|/\*|\*|--|@|\"\"\"|''')")


def parse_code(text: str, language: str) -> ParsedDocument:
    """Sections on definitions: Python through its AST, other languages on top-level keywords.

    Comment and decorator lines directly above a definition belong to it.
    """
    lines = _line_starts(text)
    boundaries: list[tuple[int, tuple[str, ...]]] | None = None
    if language == "python":
        boundaries = _python_boundaries(text, lines)
    if boundaries is None:
        boundaries = _keyword_boundaries(text, lines)
    return ParsedDocument(
        text,
        "code",
        _sections_from_boundaries(text, boundaries),
        meta={"language": language},
    )


def _extend_over_comments(text: str, lines: list[int], line: int) -> int:
    """The first line of the comment/decorator block directly above `line` (0-based)."""
    while line > 0:
        prev = text[lines[line - 1] : lines[line]]
        if not prev.strip() or not _COMMENT_LINE.match(prev):
            break
        line -= 1
    return line


def _python_boundaries(text: str, lines: list[int]) -> list[tuple[int, tuple[str, ...]]] | None:
    try:
        with _AST_LOCK:
            tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError, SystemError):
        return None  # not parseable here: fall back to keyword boundaries
    found: list[tuple[int, tuple[str, ...]]] = []

    def first_line(node: ast.AST) -> int:
        decorators = getattr(node, "decorator_list", [])
        start = min([node.lineno, *(d.lineno for d in decorators)]) - 1  # type: ignore[attr-defined]
        return _extend_over_comments(text, lines, start)

    def label(node: ast.AST) -> str:
        if isinstance(node, ast.ClassDef):
            return f"class {node.name}"
        if isinstance(node, ast.AsyncFunctionDef):
            return f"async def {node.name}"
        assert isinstance(node, ast.FunctionDef)
        return f"def {node.name}"

    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in tree.body:
        if not isinstance(node, defs):
            continue
        found.append((lines[first_line(node)], (label(node),)))
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, defs):
                    found.append((lines[first_line(member)], (label(node), label(member))))
        end = node.end_lineno or node.lineno
        if end < len(lines):
            found.append((lines[end], ()))  # module code after the definition
    boundaries: list[tuple[int, tuple[str, ...]]] = [(0, ())]
    for offset, path in sorted(found, key=lambda b: b[0]):
        if boundaries[-1][0] == offset:
            boundaries[-1] = (offset, path)
        else:
            boundaries.append((offset, path))
    return boundaries


def _keyword_boundaries(text: str, lines: list[int]) -> list[tuple[int, tuple[str, ...]]]:
    boundaries: list[tuple[int, tuple[str, ...]]] = [(0, ())]
    for number, start in enumerate(lines):
        end = lines[number + 1] if number + 1 < len(lines) else len(text)
        line = text[start:end]
        if line[:1].isspace() or not _DEFINITION.match(line):
            continue
        signature = line.strip().rstrip("{:").strip()[:120]
        first = lines[_extend_over_comments(text, lines, number)]
        if first <= boundaries[-1][0]:
            boundaries[-1] = (boundaries[-1][0], (signature,))
        else:
            boundaries.append((first, (signature,)))
    return boundaries
