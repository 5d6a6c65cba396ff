"""`python -m eval.compare`: where the service ranks the right page below the plain pipeline, on
the tune split only (the other splits are never looked at here).

Runs on the database and embedding cache a `make eval` left (like eval.tune) and rebuilds the
plain baselines from the cached embeddings. For every tune question whose right page the service's
hybrid search ranks lower than plain dense or plain dense + BM25 does, prints the ranks and the
pages of the service's first five hits, so a file-level mechanism is chosen from what the misses
show rather than guessed.
"""

from __future__ import annotations

import asyncio

from amelia_common.db import session_factory
from amelia_rag.search import Searcher, SearchFilters
from eval.__main__ import TOP_K, baseline_results
from eval.corpus import manual_dir, pages, questions
from eval.score import Ranked, first_rank
from eval.tune import eval_database


async def compare() -> None:
    every = questions()
    asked = [q for q in every if q.split == "tune"]
    files = pages(manual_dir(), every)
    async with eval_database() as db:
        plain = await baseline_results(db.embedder, files, asked)
        searcher = Searcher(session_factory(db.engine), db.embedder)
        for q in asked:
            hits = await searcher.search(
                q.question, top_k=TOP_K, min_score=0.0, mode="hybrid", filters=SearchFilters()
            )
            ours = [Ranked(db.files.get(h.document_id, "?"), h.content) for h in hits]
            rank = first_rank(ours, q, passage=False) or 99
            others = {
                label: first_rank(results[q.id], q, passage=False) or 99
                for label, results in plain.items()
            }
            if rank > min(others["plain dense"], others["plain dense + BM25 (RRF)"]):
                print(f"\n{q.id} {q.question!r} ({q.file})")
                print(f"  hybrid file rank {rank}, plain {others}")
                for i, h in enumerate(hits[:5], start=1):
                    where = " › ".join(h.heading_path)[-70:]
                    print(f"  {i}. {db.files.get(h.document_id)} {h.score:.3f} {where}")


def main() -> None:
    asyncio.run(compare())


if __name__ == "__main__":
    main()
