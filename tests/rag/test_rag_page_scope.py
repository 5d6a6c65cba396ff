"""ListDocuments' and ListChunks' page tokens are bound to their request's other parameters
(AIP-158, `amelia_common.paging.request_scope`): reused with another filter or another
document they are refused saying so."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import struct_pb2
from rag_helpers import Rag

from amelia.v1 import rag_pb2
from amelia_common.paging import DIFFERENT_REQUEST


async def _refused(call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == DIFFERENT_REQUEST


async def test_a_token_reused_with_another_filter_or_document_says_so(rag: Rag) -> None:
    tag = uuid.uuid4().hex[:8]
    metadata = struct_pb2.Struct()
    metadata.update({"scope": tag})
    names = []
    for i in range(3):
        text = "\n\n".join(f"# Part {j}\n\nWords of part {j} of {tag} {i}." for j in range(4))
        reply = await rag.ingest(text.encode(), file_path=f"/scope/{tag}/{i}.md", metadata=metadata)
        names.append(reply.document.name)
    try:
        mine = {"scope": tag}
        first = await rag.stub.ListDocuments(
            rag_pb2.ListDocumentsRequest(metadata_filter=mine, page_size=2)
        )
        assert first.next_page_token
        await _refused(
            rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(page_token=first.next_page_token))
        )
        rest = await rag.stub.ListDocuments(
            rag_pb2.ListDocumentsRequest(metadata_filter=mine, page_token=first.next_page_token)
        )
        listed = [d.name for d in [*first.documents, *rest.documents]]
        assert sorted(listed) == sorted(names)

        chunks = await rag.stub.ListChunks(rag_pb2.ListChunksRequest(parent=names[0], page_size=1))
        assert chunks.next_page_token
        await _refused(
            rag.stub.ListChunks(
                rag_pb2.ListChunksRequest(
                    parent=names[1], page_size=1, page_token=chunks.next_page_token
                )
            )
        )
    finally:
        for name in names:
            await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=name))
