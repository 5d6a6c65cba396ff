"""`python -m eval.sentences [depth]`: would re-ranking by the best-matching sentence help? On the
tune split only, like eval.tune.

For each tune question the service's hybrid search returns its first `depth` distinct passages
(20 by default); each passage is cut into sentences, every sentence embedded, and the best cosine
to the question (max-sim) mixed with the fused score: alpha × fused + (1 − alpha) × max-sim.
Prints one row per alpha and what the model had to embed: at query time a search would wait on
exactly that (session 10: 183 sentences a question, seconds of CPU), unless sentence embeddings
were stored at ingest.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time

from amelia_common.db import session_factory
from amelia_rag.search import Hit, Searcher, SearchFilters
from eval.corpus import questions
from eval.rerank import mixed
from eval.score import HEADER
from eval.tune import eval_database

ALPHAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3)
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+|\n\s*\n")
MIN_SENTENCE_CHARS = 16


def sentences(passage: str) -> list[str]:
    """The passage's sentences and paragraphs, fragments shorter than a few words left out."""
    found = [s.strip() for s in _SENTENCE_END.split(passage)]
    return [s for s in found if len(s) >= MIN_SENTENCE_CHARS] or [passage]


async def rerank(depth: int) -> None:
    async with eval_database() as db:
        asked = [q for q in questions() if q.split == "tune"]
        searcher = Searcher(session_factory(db.engine), db.embedder)
        candidates: dict[int, list[tuple[Hit, float]]] = {}
        computed, started, cut = db.embedder.computed, time.perf_counter(), 0
        for q in asked:
            hits = await searcher.search(
                q.question, top_k=depth, min_score=0.0, mode="hybrid", filters=SearchFilters()
            )
            query = await db.embedder.embed_query(q.question)
            candidates[q.id] = []
            for hit in hits:
                texts = sentences(hit.content)
                cut += len(texts)
                best = float((await db.embedder.embed(texts) @ query).max())
                candidates[q.id].append((hit, best))
        print(
            f"{len(asked)} tune questions, {depth} passages each, {cut / len(asked):.0f} sentences"
            f" a question; the model embedded {db.embedder.computed - computed} in"
            f" {time.perf_counter() - started:.0f} s (the rest from the cache)\n\n{HEADER}"
        )
        mixed(candidates, asked, db.files, ALPHAS)


def main() -> None:
    asyncio.run(rerank(int(sys.argv[1]) if len(sys.argv) > 1 else 20))


if __name__ == "__main__":
    main()
