"""`amelia.v1.RagService` over gRPC: request validation, proto conversion, status codes.

The work is done by `Ingestor` (ingest.py), `DocumentStore` (store.py) and `Searcher`
(search.py); this module only speaks protobuf. Failures become status codes in one place, the
shared interceptor (`amelia_common.errors`): this module raises `InvalidArgumentError` / `NotFoundError`,
lets database and NATS connection errors escape (UNAVAILABLE naming PostgreSQL or NATS), and
`rag_errors` translates the rag modules' own errors (bad document, embedding model down) into
those types. An event-log outage fails no change: a change's events wait in the outbox.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf import struct_pb2

from amelia.v1 import rag_pb2, rag_pb2_grpc
from amelia_common import paging
from amelia_common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    check_struct,
)
from amelia_common.json_numbers import whole_numbers
from amelia_common.logging import get_logger
from amelia_common.names import uuid_name
from amelia_common.settings import Settings
from amelia_rag.embeddings import EmbeddingUnavailableError
from amelia_rag.ingest import Ingestor, Source
from amelia_rag.models import DocumentRow
from amelia_rag.parsing import InvalidDocumentError
from amelia_rag.search import MAX_QUERY_CHARS, MAX_TOP_K, Hit, Searcher, SearchFilters
from amelia_rag.store import DocumentStore, StoredChunk

log = get_logger("amelia.rag")

TYPE_TO_PROTO = {
    "pdf": rag_pb2.DOCUMENT_TYPE_PDF,
    "markdown": rag_pb2.DOCUMENT_TYPE_MARKDOWN,
    "text": rag_pb2.DOCUMENT_TYPE_TEXT,
    "html": rag_pb2.DOCUMENT_TYPE_HTML,
    "code": rag_pb2.DOCUMENT_TYPE_CODE,
    "web_page": rag_pb2.DOCUMENT_TYPE_WEB_PAGE,
}
PROTO_TO_TYPE = {v: k for k, v in TYPE_TO_PROTO.items()}
MODES = {
    rag_pb2.SEARCH_MODE_UNSPECIFIED: "hybrid",
    rag_pb2.SEARCH_MODE_HYBRID: "hybrid",
    rag_pb2.SEARCH_MODE_VECTOR: "vector",
    rag_pb2.SEARCH_MODE_KEYWORD: "keyword",
}
DEFAULT_PAGE_SIZE = 50
DEFAULT_CHUNK_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def document_type(value: int, field: str = "type") -> str:
    if value == rag_pb2.DOCUMENT_TYPE_UNSPECIFIED:
        return ""
    if value not in PROTO_TO_TYPE:
        raise InvalidArgumentError(f"{field} {value} is not a known DocumentType")
    return PROTO_TO_TYPE[rag_pb2.DocumentType.ValueType(value)]


def source_from_proto(message: rag_pb2.DocumentSource) -> Source:
    metadata = (
        whole_numbers(check_struct(message.metadata, "source.metadata"))
        if message.HasField("metadata")
        else {}
    )
    return Source(
        title=message.title,
        type=document_type(message.type, "source.type"),
        source_uri=message.source_uri.strip(),
        file_path=message.file_path.strip(),
        metadata=metadata,
    )


STATE_TO_PROTO = {
    "indexing": rag_pb2.DOCUMENT_STATE_INDEXING,
    "ready": rag_pb2.DOCUMENT_STATE_READY,
    "failed": rag_pb2.DOCUMENT_STATE_FAILED,
}


def document_to_proto(row: DocumentRow, embedded: int) -> rag_pb2.Document:
    """The Document resource; `embedded` is how many of its chunks have their embedding."""
    document = rag_pb2.Document(
        name=f"documents/{row.id}",
        title=row.title,
        type=TYPE_TO_PROTO[row.type],
        source_uri=row.source_uri,
        file_path=row.file_path,
        size_bytes=row.size_bytes,
        content_hash=row.content_hash,
        chunk_count=row.chunk_count,
        state=STATE_TO_PROTO.get(row.state, rag_pb2.DOCUMENT_STATE_UNSPECIFIED),
        index_error=row.index_error or "",
        embedded_chunk_count=embedded,
    )
    metadata = struct_pb2.Struct()
    metadata.update(row.meta or {})
    document.metadata.CopyFrom(metadata)
    document.create_time.FromDatetime(row.create_time)
    document.update_time.FromDatetime(row.update_time)
    return document


# SearchHit fields a Hit holds under the same name and in the same form.
_HIT_FIELDS = (
    "content",
    "score",
    "document_title",
    "chunk_index",
    "start_offset",
    "end_offset",
    "heading_path",
    "page",
    "vector_score",
)


def hit_to_proto(hit: Hit) -> rag_pb2.SearchHit:
    return rag_pb2.SearchHit(
        document=f"documents/{hit.document_id}",
        document_type=TYPE_TO_PROTO[hit.document_type],
        **{name: getattr(hit, name) for name in _HIT_FIELDS},
    )


def chunk_to_proto(chunk: StoredChunk) -> rag_pb2.Chunk:
    return rag_pb2.Chunk(
        chunk_index=chunk.chunk_index,
        content=chunk.content,
        start_offset=chunk.start_offset,
        end_offset=chunk.end_offset,
        heading_path=chunk.heading_path or [],
        page=chunk.page,
        embedded=chunk.embedded,
    )


def chunk_page_token(document: DocumentRow, chunk_index: int, scope: str) -> str:
    """The document's content version and the last chunk index listed: a token is only good
    for the content it was made on (a re-ingest replaces the chunks)."""
    return paging.encode_keyset(document.update_time, str(chunk_index), scope)


def after_chunk(document: DocumentRow, token: str, scope: str) -> int:
    """The chunk index a ListChunks page token continues after (-1: from the start)."""
    if not token:
        return -1
    version, last = paging.decode_keyset(token, scope)
    if not last.isdigit():
        raise InvalidArgumentError(paging.BAD_TOKEN)
    if version != document.update_time:
        raise FailedPreconditionError(
            "the document's content changed since this page token was made: "
            "list its chunks again from the first page"
        )
    return int(last)


def metadata_filter(values: Any) -> dict[str, str]:
    out = dict(values)
    for key, value in out.items():
        if not key or "\x00" in key:
            raise InvalidArgumentError(f"metadata_filter key {key!r} is not a valid key")
        if "\x00" in value:
            raise InvalidArgumentError(
                f"metadata_filter value for {key!r} contains a NUL character"
            )
    return out


def search_top_k(requested: int, default: int) -> int:
    """How many hits a Search returns: `requested`, 0 meaning the service's `RAG_TOP_K`. The one
    check behind gRPC, the gateway's `/v1/search` and `amelia search` alike, so its message
    names the range every client may send (it said "use 1..100" while 0 was accepted)."""
    if not 0 <= requested <= MAX_TOP_K:
        raise InvalidArgumentError(
            f"top_k {requested} is out of range: use 0..{MAX_TOP_K} "
            f"(0: the service's default, RAG_TOP_K = {default})"
        )
    return requested or default


@contextmanager
def rag_errors() -> Iterator[None]:
    """The rag modules' own errors as the shared typed errors (the interceptor maps those)."""
    try:
        yield
    except InvalidDocumentError as exc:
        raise InvalidArgumentError(str(exc)) from exc
    except EmbeddingUnavailableError as exc:
        raise UnavailableError("the embedding model", str(exc)) from exc


class RagServicer(rag_pb2_grpc.RagServiceServicer):
    """RagService: documents in, passages out."""

    def __init__(
        self,
        settings: Settings,
        store: DocumentStore,
        ingestor: Ingestor,
        searcher: Searcher,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ingestor = ingestor
        self.searcher = searcher

    async def _documents(self, rows: Sequence[DocumentRow]) -> list[rag_pb2.Document]:
        """Documents as the API shows them, with how far their indexing has got."""
        embedded = await self.store.embedded_counts(rows)
        return [document_to_proto(r, embedded[r.id]) for r in rows]

    async def IngestDocument(
        self, request: rag_pb2.IngestDocumentRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.IngestDocumentResponse:
        if len(request.content) > self.settings.MAX_INLINE_DOCUMENT_BYTES:
            raise InvalidArgumentError(
                f"content is {len(request.content)} bytes; IngestDocument takes up to "
                f"{self.settings.MAX_INLINE_DOCUMENT_BYTES} bytes "
                f"(MAX_INLINE_DOCUMENT_BYTES): send larger files with UploadDocument"
            )
        with rag_errors():
            result = await self.ingestor.ingest(source_from_proto(request.source), request.content)
        [document] = await self._documents([result.document])
        return rag_pb2.IngestDocumentResponse(document=document, unchanged=result.unchanged)

    async def UploadDocument(
        self,
        request_iterator: AsyncIterator[rag_pb2.UploadDocumentRequest],
        context: grpc.aio.ServicerContext,
    ) -> rag_pb2.UploadDocumentResponse:
        limit = self.settings.MAX_DOCUMENT_BYTES
        source: Source | None = None
        content = bytearray()
        async for message in request_iterator:
            part = message.WhichOneof("part")
            if part == "source":
                if source is not None:
                    raise InvalidArgumentError(
                        "the upload sent its source twice; send it only first"
                    )
                source = source_from_proto(message.source)
            elif part == "content":
                if source is None:
                    raise InvalidArgumentError("the first upload message must be the source")
                content += message.content
                if len(content) > limit:
                    raise InvalidArgumentError(
                        f"document is over the size limit of {limit} bytes (MAX_DOCUMENT_BYTES)"
                    )
            else:
                raise InvalidArgumentError("an upload message has neither source nor content")
        if source is None:
            raise InvalidArgumentError("the upload sent no source message")
        with rag_errors():
            result = await self.ingestor.ingest(source, bytes(content))
        [document] = await self._documents([result.document])
        return rag_pb2.UploadDocumentResponse(document=document, unchanged=result.unchanged)

    async def GetDocument(
        self, request: rag_pb2.GetDocumentRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.GetDocumentResponse:
        row = await self.store.get(uuid_name(request.name, "documents"))
        if row is None:
            raise NotFoundError(f"{request.name} does not exist")
        [document] = await self._documents([row])
        return rag_pb2.GetDocumentResponse(document=document)

    async def ListDocuments(
        self, request: rag_pb2.ListDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.ListDocumentsResponse:
        page_size = paging.page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        types = [document_type(t, "types") for t in request.types]
        with rag_errors():
            rows, token = await self.store.list(
                page_size=page_size,
                page_token=request.page_token,
                types=[t for t in types if t],
                metadata=metadata_filter(request.metadata_filter),
                scope=paging.request_scope(request),
            )
        return rag_pb2.ListDocumentsResponse(
            documents=await self._documents(rows), next_page_token=token
        )

    async def ListChunks(
        self, request: rag_pb2.ListChunksRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.ListChunksResponse:
        page_size = paging.page_size(request.page_size, DEFAULT_CHUNK_PAGE_SIZE, MAX_PAGE_SIZE)
        document = await self.store.get(uuid_name(request.parent, "documents", "parent"))
        if document is None:
            raise NotFoundError(f"{request.parent} does not exist")
        scope = paging.request_scope(request)
        after = after_chunk(document, request.page_token, scope)
        chunks, more = await self.store.chunks(document.id, page_size=page_size, after=after)
        token = chunk_page_token(document, chunks[-1].chunk_index, scope) if more else ""
        return rag_pb2.ListChunksResponse(
            chunks=[chunk_to_proto(c) for c in chunks], next_page_token=token
        )

    async def DeleteDocument(
        self, request: rag_pb2.DeleteDocumentRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.DeleteDocumentResponse:
        with rag_errors():
            row = await self.ingestor.delete(uuid_name(request.name, "documents"))
        if row is None:
            raise NotFoundError(f"{request.name} does not exist")
        return rag_pb2.DeleteDocumentResponse()

    async def Search(
        self, request: rag_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> rag_pb2.SearchResponse:
        query = request.query.strip()
        if not query:
            raise InvalidArgumentError("query is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidArgumentError(f"query is longer than {MAX_QUERY_CHARS} characters")
        top_k = search_top_k(request.top_k, self.settings.RAG_TOP_K)
        min_score = (
            request.min_score
            if request.HasField("min_score")
            else self.settings.RAG_SIMILARITY_THRESHOLD
        )
        if math.isnan(min_score) or not -1.0 <= min_score <= 1.0:
            raise InvalidArgumentError(f"min_score {min_score} is out of range: use -1..1")
        if request.mode not in MODES:
            raise InvalidArgumentError(f"mode {request.mode} is not a known SearchMode")
        types = [document_type(t, "types") for t in request.types]
        filters = SearchFilters(
            document_ids=[uuid_name(n, "documents", "documents") for n in request.documents],
            types=[t for t in types if t],
            metadata=metadata_filter(request.metadata_filter),
        )
        with rag_errors():
            hits = await self.searcher.search(
                query, top_k=top_k, min_score=min_score, mode=MODES[request.mode], filters=filters
            )
        return rag_pb2.SearchResponse(hits=[hit_to_proto(h) for h in hits])
