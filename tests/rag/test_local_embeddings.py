"""The local model behind its batcher: shared encode calls, right rows back, progress, cancel."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from rag_helpers import CountingModel

from amelia_rag.embeddings import LocalEmbedder


def small_batches(model: CountingModel) -> LocalEmbedder:
    # batch 4 → encode calls of up to 16 texts, so a few dozen texts make several calls.
    return LocalEmbedder(model, batch_size=4, name="test", dimension=384)


async def test_concurrent_documents_share_calls_and_get_their_own_vectors(
    counting_model: CountingModel,
) -> None:
    embedder = small_batches(counting_model)
    try:
        docs = [
            [f"document {d} sentence {i} about topic {d * 7 + i}" for i in range(6)]
            for d in range(4)
        ]
        calls = counting_model.calls
        results = await asyncio.gather(*(embedder.embed(texts) for texts in docs))
        shared_calls = counting_model.calls - calls
        assert shared_calls < len(docs), "documents were not batched together"
        for texts, vectors in zip(docs, results, strict=True):
            expected = counting_model.model.encode(texts, normalize_embeddings=True)
            assert vectors.shape == (6, 384)
            assert np.allclose(vectors, expected, atol=1e-5)
    finally:
        await embedder.aclose()


async def test_long_document_reports_progress_before_its_result(
    counting_model: CountingModel,
) -> None:
    embedder = small_batches(counting_model)
    seen: list[tuple[int, int]] = []

    async def progress(done: int, total: int) -> None:
        seen.append((done, total))

    try:
        texts = [f"line number {i}" for i in range(40)]
        vectors = await embedder.embed(texts, on_progress=progress)
        assert vectors.shape == (40, 384)
        assert seen == [(16, 40), (32, 40)]
    finally:
        await embedder.aclose()


class GatedModel:
    """The real model, whose calls of several texts (passages, not a query) wait at a gate the
    test opens: an indexing call held in flight for as long as the test needs."""

    def __init__(self, model: CountingModel) -> None:
        self.model = model

    def encode(self, sentences: list[str], **kwargs: Any) -> Any:
        if len(sentences) > 1:
            _ENTERED.set()
            _GATE.wait(60)
        return self.model.encode(sentences, **kwargs)

    def get_embedding_dimension(self) -> int:
        return self.model.get_embedding_dimension()


# Module-level: the query's copy of the model (a deep copy) shares them.
_GATE = threading.Event()
_ENTERED = threading.Event()


async def test_a_query_does_not_wait_for_an_encode_call_in_flight(
    counting_model: CountingModel,
) -> None:
    embedder = LocalEmbedder(GatedModel(counting_model), batch_size=4, name="test", dimension=384)
    _GATE.clear()
    _ENTERED.clear()
    try:
        passages = asyncio.create_task(embedder.embed([f"passage {i}" for i in range(64)]))
        assert await asyncio.to_thread(_ENTERED.wait, 60), "no encode call started"
        query = await asyncio.wait_for(embedder.embed_query("what is a passage?"), 60)
        assert not passages.done(), "the passages' call was not held"
        expected = counting_model.model.encode(["what is a passage?"], normalize_embeddings=True)
        assert np.allclose(query, expected[0], atol=1e-5)
        _GATE.set()
        assert (await passages).shape == (64, 384)
    finally:
        _GATE.set()
        await embedder.aclose()


async def test_a_cancelled_request_stops_using_the_model(counting_model: CountingModel) -> None:
    embedder = small_batches(counting_model)
    try:
        texts_before = counting_model.texts
        first_call = asyncio.Event()

        async def progress(done: int, total: int) -> None:
            first_call.set()

        task = asyncio.create_task(
            embedder.embed([f"text {i}" for i in range(160)], on_progress=progress)
        )
        await first_call.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await embedder.embed_query("still works")
        assert counting_model.texts - texts_before < 160
    finally:
        await embedder.aclose()
