"""`top_k` is 0 (the service's RAG_TOP_K) to 100, and a value outside says so (QA s21 F5: the
message said "use 1..100" while 0 was accepted and documented as 0…100). One check, the
servicer's, behind gRPC, the gateway's `/v1/search` and `amelia search` alike."""

from __future__ import annotations

import grpc
import pytest
from rag_helpers import Rag

from amelia.v1 import rag_pb2


@pytest.mark.parametrize("top_k", [-1, 101, 10**9])
async def test_a_top_k_out_of_range_names_the_range_0_to_100(rag: Rag, top_k: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.Search(rag_pb2.SearchRequest(query="kestrel", top_k=top_k))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    default = rag.settings.RAG_TOP_K
    assert err.value.details() == (
        f"top_k {top_k} is out of range: use 0..100 (0: the service's default, "
        f"RAG_TOP_K = {default})"
    )


async def test_top_k_0_and_100_are_taken(rag: Rag) -> None:
    await rag.ingest(
        b"# Kestrels\n\nA kestrel hovers over the verge, facing the wind.\n",
        file_path="/tmp/top-k-kestrels.md",
    )
    for top_k in (0, 100):
        reply = await rag.stub.Search(
            rag_pb2.SearchRequest(query="kestrel", top_k=top_k, mode=rag_pb2.SEARCH_MODE_KEYWORD)
        )
        assert 1 <= len(reply.hits) <= (top_k or rag.settings.RAG_TOP_K)
