"""ListChunks: a document's chunks in document order, page by page, and what it refuses."""

from __future__ import annotations

import uuid

import grpc
import pytest
from rag_helpers import Rag

from amelia.v1 import rag_pb2


def _markdown(tag: str, sections: int) -> bytes:
    return "".join(
        f"## Part {i}\n\nThe {tag} note number {i} says something about section {i}.\n\n"
        for i in range(sections)
    ).encode()


async def _all_chunks(rag: Rag, name: str, page_size: int) -> list[rag_pb2.Chunk]:
    chunks: list[rag_pb2.Chunk] = []
    token = ""
    while True:
        page = await rag.stub.ListChunks(
            rag_pb2.ListChunksRequest(parent=name, page_size=page_size, page_token=token)
        )
        assert len(page.chunks) <= page_size
        chunks.extend(page.chunks)
        token = page.next_page_token
        if not token:
            return chunks


async def test_chunks_come_in_document_order_across_pages_and_slice_the_text(rag: Rag) -> None:
    tag = uuid.uuid4().hex[:8]
    content = _markdown(tag, 7)
    reply = await rag.ingest(content, file_path=f"/chunks/{tag}.md")
    name = reply.document.name

    chunks = await _all_chunks(rag, name, page_size=3)
    assert [c.chunk_index for c in chunks] == list(range(reply.document.chunk_count))
    assert len(chunks) == 7
    text = content.decode()
    for i, chunk in enumerate(chunks):
        assert chunk.content == text[chunk.start_offset : chunk.end_offset]
        assert chunk.heading_path[-1] == f"Part {i}"
    # One page when it fits; the default page holds them all.
    whole = await rag.stub.ListChunks(rag_pb2.ListChunksRequest(parent=name))
    assert [c.content for c in whole.chunks] == [c.content for c in chunks]
    assert whole.next_page_token == ""

    await rag.indexed(name)
    whole = await rag.stub.ListChunks(rag_pb2.ListChunksRequest(parent=name))
    assert all(c.embedded for c in whole.chunks)


async def test_a_token_made_before_a_reingest_is_refused_not_mixed(rag: Rag) -> None:
    tag = uuid.uuid4().hex[:8]
    path = f"/chunks/{tag}.md"
    first = await rag.ingest(_markdown(tag, 4), file_path=path)
    page = await rag.stub.ListChunks(
        rag_pb2.ListChunksRequest(parent=first.document.name, page_size=2)
    )
    assert page.next_page_token
    await rag.ingest(_markdown(f"{tag}-changed", 4), file_path=path)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rag.stub.ListChunks(
            rag_pb2.ListChunksRequest(
                parent=first.document.name, page_size=2, page_token=page.next_page_token
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "first page" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("request_fields", "code", "says"),
    [
        ({"parent": "documents/nope"}, grpc.StatusCode.INVALID_ARGUMENT, "parent"),
        ({"parent": f"documents/{uuid.uuid4()}"}, grpc.StatusCode.NOT_FOUND, "does not exist"),
        ({"page_size": -1}, grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
        ({"page_token": "made-up"}, grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
    ],
)
async def test_bad_requests_are_refused_with_a_reason(
    rag: Rag, request_fields: dict[str, object], code: grpc.StatusCode, says: str
) -> None:
    if "parent" not in request_fields:
        reply = await rag.ingest(
            b"# One\n\nSmall.\n", wait=False, file_path=f"/chunks/{uuid.uuid4()}.md"
        )
        request_fields = {"parent": reply.document.name, **request_fields}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rag.stub.ListChunks(rag_pb2.ListChunksRequest(**request_fields))
    assert caught.value.code() == code
    assert says in (caught.value.details() or "")
