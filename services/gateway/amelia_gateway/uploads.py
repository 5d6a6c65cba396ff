"""`POST /v1/documents` with a file: multipart/form-data or a raw body, streamed to UploadDocument.

A JSON body goes to IngestDocument (content inline, base64). Anything else is an upload: the
gateway parses it as it arrives and forwards the content in pieces on RagService.UploadDocument,
so a 50 MB PDF never sits whole in the gateway's memory.

- multipart/form-data: form fields first (`source` as a JSON DocumentSource, or any of its fields
  by name: `title`, `type`, `sourceUri`, `filePath`, `metadata` as a JSON object), then one file
  part. Each field once (a field twice, or in `source` and beside it, is a 400, as a query
  parameter twice is), and no query string: nothing the client sent is silently dropped.
- any other content type: the body is the document; DocumentSource fields come from the query
  string (`?title=notes.md&type=DOCUMENT_TYPE_MARKDOWN`, `metadata` as a JSON object, read as
  the multipart form's is: a raw upload had no way to carry metadata before, QA s27b L4), the
  file name may come from
  `Content-Disposition: attachment; filename="notes.md"`, or `filename*=UTF-8''%E5%90%8D.md`
  (RFC 6266/8187, how HTTP clients send a name that is not ASCII), which wins over `filename`.

The title is the rag service's to choose, as for IngestDocument without a title and `amelia
ingest` (the client's title, else the `filePath`'s file name, else what the page itself says for
a `sourceUri`): the upload's file name is sent as the title only when the request names the
document no other way (no title, `filePath` or `sourceUri`), as it must be named by something.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import grpc
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from amelia.v1 import rag_pb2
from amelia_gateway.errors import GatewayError, cut, invalid
from amelia_gateway.json_input import read_json_object
from amelia_gateway.requests import client_timeout, too_large
from amelia_gateway.state import Gateway
from amelia_gateway.transcode import find_field, parse_into, query_to_dict, to_json

PIECE_BYTES = 256 * 1024
MAX_FIELD_BYTES = 64 * 1024
MULTIPART_OVERHEAD = 1024 * 1024

# A Content-Disposition parameter: its name and its value, a token or a quoted string.
_PARAMETER = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
# RFC 8187 §3.2.1 ext-value: charset'language'value-chars (attr-chars and %XX).
_EXT_VALUE = re.compile(
    r"([A-Za-z0-9!#$%&+^_`{}~-]+)'([A-Za-z0-9-]*)'((?:[A-Za-z0-9!#$&+.^_`|~-]|%[0-9A-Fa-f]{2})*)"
)
_EXT_CHARSETS = {"utf-8": "utf-8", "iso-8859-1": "latin-1"}


def _source_from_fields(fields: list[tuple[str, str]], filename: str) -> rag_pb2.DocumentSource:
    """The DocumentSource a multipart upload's form fields describe. Each field once: a field
    sent twice (`filePath` two times, or `filePath` and `file_path`), `source` twice, or one
    `source` names and a form field sets again is a 400 naming it, even with equal values, as a
    query parameter given twice is (one of them silently won before: QA s26 F7)."""
    descriptor = rag_pb2.DocumentSource.DESCRIPTOR
    given: dict[str, Any] | None = None
    items: list[tuple[str, str]] = []
    for name, text in fields:
        if name != "source":
            items.append((name, text))
        elif given is not None:
            raise invalid("form field 'source' is given more than once")
        else:
            given = read_json_object(text, "form field 'source'")
    values = query_to_dict(
        descriptor,
        items,
        set(),
        what="form field",
        json_value=lambda text, key: read_json_object(text, f"form field {key!r}"),
    )
    source = rag_pb2.DocumentSource()
    if given is not None:
        parse_into(source, given, "form field 'source'")
        in_source = {f.name for key in given if (f := find_field(descriptor, key)) is not None}
        for name, _ in items:
            field = find_field(descriptor, name.split(".", 1)[0])
            if field is not None and field.name in in_source:
                raise invalid(
                    f"form field {name!r} is also given in form field 'source': send it once"
                )
    if values:
        parse_into(source, values, "form fields")
    return _named(source, filename)


def _named(source: rag_pb2.DocumentSource, filename: str) -> rag_pb2.DocumentSource:
    """`source`, titled by the upload's file name only if nothing else names the document (the
    rag service titles it otherwise, the same for every client)."""
    if filename and not (source.title or source.file_path or source.source_uri):
        source.title = filename
    return source


class _Call:
    """One UploadDocument call, opened at the first message and written to piece by piece.

    Opened lazily so a request the gateway refuses before the document starts (bad fields, an
    empty body) never reaches the rag service at all.
    """

    def __init__(self, gateway: Gateway, rid: str, timeout: float) -> None:
        self.gateway = gateway
        self.rid = rid
        self.timeout = timeout
        self.upstream = gateway.upstreams["RagService"]
        self.call: Any = None
        self.sent = 0

    async def write(self, message: rag_pb2.UploadDocumentRequest) -> None:
        if self.call is None:
            self.call = self.gateway.upstreams.callable("RagService", "UploadDocument")(
                timeout=self.timeout, metadata=(("x-request-id", self.rid),)
            )
        try:
            await self.call.write(message)
        except grpc.aio.AioRpcError as exc:
            raise self.upstream.error(exc) from None
        except Exception:  # noqa: BLE001 - the call ended early; its status says why
            await self.finish()

    async def content(self, data: bytes) -> None:
        for start in range(0, len(data), PIECE_BYTES):
            await self.write(
                rag_pb2.UploadDocumentRequest(content=data[start : start + PIECE_BYTES])
            )
        self.sent += len(data)

    async def finish(self) -> rag_pb2.UploadDocumentResponse:
        if self.call is None:
            raise invalid("the upload is empty: send the document as the request body")
        try:
            await self.call.done_writing()
            response: rag_pb2.UploadDocumentResponse = await self.call
        except grpc.aio.AioRpcError as exc:
            raise self.upstream.error(exc) from None
        return response

    def cancel(self) -> None:
        if self.call is not None:
            self.call.cancel()


async def upload(gateway: Gateway, request: Request, rid: str) -> Response:
    timeout = client_timeout(request, gateway.settings.GATEWAY_UPLOAD_TIMEOUT_SECONDS)
    limit = gateway.settings.MAX_DOCUMENT_BYTES
    media, params = parse_options_header(request.headers.get("content-type", ""))
    call: _Call | None = None
    try:
        if media == b"multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary:
                raise invalid("multipart/form-data without a boundary")
            query = request.query_params.multi_items()
            if query:  # ignored before, silently: say where the fields go instead
                raise invalid(
                    f"query parameter {cut(query[0][0], 40)!r}: a multipart upload takes the "
                    "document's fields as form fields (before the file), not in the query string"
                )
            call = _Call(gateway, rid, timeout)
            await _multipart(request, boundary, call, limit)
        else:
            call = _Call(gateway, rid, timeout)
            await _raw(request, call, limit)
        response = await call.finish()
    except BaseException:
        if call is not None:
            call.cancel()
        raise
    return JSONResponse(to_json(response), headers={"X-Request-Id": rid})


async def _raw(request: Request, call: _Call, limit: int) -> None:
    query = list(request.query_params.multi_items())
    values = query_to_dict(
        rag_pb2.DocumentSource.DESCRIPTOR,
        query,
        set(),
        json_value=lambda text, key: read_json_object(text, f"query parameter {key!r}"),
    )
    source = rag_pb2.DocumentSource()
    parse_into(source, values, "query string")
    filename = disposition_filename(request.headers.get("content-disposition", ""))
    _named(source, filename.rsplit("/", 1)[-1])
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit, "document", "MAX_DOCUMENT_BYTES")
    async for chunk in request.stream():
        if not chunk:
            continue
        if call.sent + len(chunk) > limit:
            raise too_large(limit, "document", "MAX_DOCUMENT_BYTES")
        if call.call is None:  # the header goes with the first content
            await call.write(rag_pb2.UploadDocumentRequest(source=source))
        await call.content(chunk)
    if call.sent == 0:
        raise invalid("the upload is empty: send the document as the request body")


def disposition_filename(header: str) -> str:
    """The file name a raw upload's Content-Disposition gives: `filename*` (RFC 8187) when
    present, as RFC 6266 §4.3 says a recipient that reads it should prefer it (clients send a
    name that is not ASCII there, and an ASCII fallback in `filename`), else `filename`. A
    `filename*` that cannot be decoded falls back to `filename` (what the fallback is for), and
    is a 400 without one, not a silently mangled title."""
    _, options = parse_options_header(header)
    # Starlette reads headers as latin-1: a raw UTF-8 name comes back as it was sent.
    fallback = options.get(b"filename", b"").decode("utf-8", "replace")
    for name, value in _PARAMETER.findall(header):
        if name.lower() == "filename*":
            try:
                extended = _decoded_ext_value(value.strip())
            except GatewayError:
                if fallback:
                    return fallback
                raise
            if extended:
                return extended
            break
    return fallback


def _decoded_ext_value(value: str) -> str:
    """An RFC 8187 ext-value (`UTF-8''%E5%90%8D.md`) decoded, or INVALID_ARGUMENT saying why."""
    match = _EXT_VALUE.fullmatch(value)
    if match is None:
        raise invalid(
            f"Content-Disposition filename* {cut(value, 80)!r} is not an RFC 8187 value like "
            "UTF-8''%E5%90%8D.md: a charset, two single quotes, then the name percent-encoded"
        )
    charset, _, encoded = match.groups()
    codec = _EXT_CHARSETS.get(charset.lower())
    if codec is None:
        raise invalid(
            f"Content-Disposition filename* is in charset {cut(charset, 40)!r}: send it as "
            "UTF-8 (filename*=UTF-8''…, the name percent-encoded)"
        )
    try:
        return urllib.parse.unquote_to_bytes(encoded).decode(codec)
    except UnicodeDecodeError as exc:
        raise invalid(
            f"Content-Disposition filename* is not valid {charset} once percent-decoded "
            f"(byte {exc.start} of the name): percent-encode the name's UTF-8 bytes"
        ) from None


class _Parts:
    """Multipart parser state: form fields, then the one file, forwarded as it arrives."""

    def __init__(self) -> None:
        self.fields: list[tuple[str, str]] = []  # in the order sent, repeats kept
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name = ""
        self.filename: str | None = None
        self.buffer = bytearray()
        self.file_started = False
        self.file_done = False
        self.pending: list[bytes] = []  # file content ready to forward
        self.error: GatewayError | None = None

    def on_part_begin(self) -> None:
        self.headers = {}
        self.buffer = bytearray()
        self.name = ""
        self.filename = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field = b""
        self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is not None:
            if self.file_started:
                self._fail("send one file per upload")
            self.filename = filename.decode("utf-8", "replace").rsplit("/", 1)[-1]
            self.file_started = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.filename is not None:
            self.pending.append(data[start:end])
            return
        if self.file_started:
            self._fail("form fields must come before the file")
            return
        self.buffer += data[start:end]
        if len(self.buffer) > MAX_FIELD_BYTES:
            self._fail(f"form field {self.name!r} is larger than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.filename is not None:
            self.file_done = True
        elif not self.file_started:
            self.fields.append((self.name, self.buffer.decode("utf-8", "replace")))

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = invalid(message)

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }


async def _multipart(request: Request, boundary: bytes, call: _Call, limit: int) -> None:
    parts = _Parts()
    parser = MultipartParser(boundary, callbacks=parts.callbacks())
    received = 0
    header_sent = False
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit + MULTIPART_OVERHEAD:
            raise too_large(limit, "document", "MAX_DOCUMENT_BYTES")
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise invalid(f"malformed multipart body: {exc}") from None
        if parts.error is not None:
            raise parts.error
        if parts.file_started and not header_sent:
            source = _source_from_fields(parts.fields, parts.filename or "")
            await call.write(rag_pb2.UploadDocumentRequest(source=source))
            header_sent = True
        if parts.pending:
            data = b"".join(parts.pending)
            parts.pending.clear()
            if call.sent + len(data) > limit:
                raise too_large(limit, "document", "MAX_DOCUMENT_BYTES")
            await call.content(data)
    try:
        parser.finalize()
    except MultipartParseError as exc:
        raise invalid(f"malformed multipart body: {exc}") from None
    if not parts.file_started:
        raise invalid("the multipart body has no file part (a part with a filename)")
    if not parts.file_done:
        raise invalid("the multipart body ended inside the file part")
