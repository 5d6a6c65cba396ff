"""`python -m eval.rerank [depth]`: would re-ranking the search's passages by the embedding model
help? On the tune split only, like eval.tune.

For each tune question the service's hybrid search returns its first `depth` distinct passages
(20 by default). Each passage is embedded whole — in windows of what the model reads, cut like
chunks, each with the title and heading path in front, the best window's cosine kept (max-pool) —
and that cosine is mixed with the fused score: alpha × fused + (1 − alpha) × cosine, the passages
re-sorted, the first TOP_K scored. Prints one row per alpha, and how many passage texts the model
had to embed and how long it took: a search would wait on exactly that, unless every passage's
embedding were stored at ingest (one more encode per chunk, of a longer text).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import numpy as np

from amelia_common.db import session_factory
from amelia_rag.chunking import MODEL_CHUNK_CHARS, context_text, split_spans
from amelia_rag.search import Hit, Searcher, SearchFilters
from eval.__main__ import TOP_K
from eval.cache import CachedEmbedder
from eval.corpus import Question, questions
from eval.score import HEADER, Ranked, row, score
from eval.tune import eval_database

ALPHAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.0)


async def passage_similarity(embedder: CachedEmbedder, query: np.ndarray, hit: Hit) -> float:
    """Cosine of the query to the passage: the best of its model-sized windows."""
    overlap = MODEL_CHUNK_CHARS // 4
    spans = split_spans(hit.content, 0, len(hit.content), MODEL_CHUNK_CHARS, overlap)
    windows = [
        context_text(hit.document_title, tuple(hit.heading_path), hit.page, hit.content[s:e])
        for s, e in spans or [(0, len(hit.content))]
    ]
    return float((await embedder.embed(windows) @ query).max())


async def rerank(depth: int) -> None:
    async with eval_database() as db:
        asked = [q for q in questions() if q.split == "tune"]
        searcher = Searcher(session_factory(db.engine), db.embedder)
        candidates: dict[int, list[tuple[Hit, float]]] = {}
        computed, started = db.embedder.computed, time.perf_counter()
        for q in asked:
            hits = await searcher.search(
                q.question, top_k=depth, min_score=0.0, mode="hybrid", filters=SearchFilters()
            )
            query = await db.embedder.embed_query(q.question)
            candidates[q.id] = [(h, await passage_similarity(db.embedder, query, h)) for h in hits]
        seconds = time.perf_counter() - started
        print(
            f"{len(asked)} tune questions, {depth} passages each, re-ranked; the model embedded"
            f" {db.embedder.computed - computed} passage windows in {seconds:.0f} s (the rest"
            f" from the cache)\n\n{HEADER}"
        )
        mixed(candidates, asked, db.files, ALPHAS)


def mixed(
    candidates: dict[int, list[tuple[Hit, float]]],
    asked: list[Question],
    files: dict[Any, str],
    alphas: tuple[float, ...],
) -> None:
    """One row per alpha: the passages re-sorted by alpha × fused + (1 − alpha) × similarity."""
    for alpha in alphas:
        results: dict[int, list[Ranked]] = {}
        for qid, found in candidates.items():
            best = sorted(found, key=lambda p: -(alpha * p[0].score + (1 - alpha) * p[1]))
            results[qid] = [Ranked(files.get(h.document_id, "?"), h.content) for h, _ in best]
            results[qid] = results[qid][:TOP_K]
        scored = score(results, asked)
        print(row(f"hybrid, alpha {alpha}", scored), scored.misses, flush=True)


def main() -> None:
    asyncio.run(rerank(int(sys.argv[1]) if len(sys.argv) > 1 else 20))


if __name__ == "__main__":
    main()
