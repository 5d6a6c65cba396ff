"""`python -m eval.pages search [setting …] | ceiling`: page then passage, neighbour context and
query forms, measured offline on the database a `make eval` left (issue 16, session 12).

`search`: the service's hybrid search with one of these steps added after its fusion (each
setting a JSON object; the first is the baseline the others' rose/fell counts compare with):

- `{"pages": 5, "weight": 1.0, "local_idf": true}`: the chunks of the first `pages` documents of
  the fused ranking ranked again among those pages only (exact vector ranks within them; the
  keyword leg's term weights counted over those pages when `local_idf`, over the corpus
  otherwise), fused (RRF) and that ranking fused with the global one at `weight`;
- `{"neighbours": 0.3, "near": "adjacent"}`: a chunk's fused score plus `neighbours` × the best
  fused score of its neighbours (`adjacent`: the chunks before and after it in its section;
  `previous`: the one before; `section`: every chunk of its section);
- `{"forms": true}`: the question without its stem ("How do I", "What does") embedded too, the
  vector leg ranking each chunk by the better cosine of the two, the keyword leg reading the
  stripped form.

Printed like eval.tune: the tuning splits (tune, tune2) unless EVAL_SPLIT says otherwise (other splits:
aggregates and how many questions rose/fell only).

`ceiling`: for every split (aggregates only), the right passage's rank if the right page were
known: the page's chunks ranked by the service's two legs among themselves, fused, and cut into
distinct passages like a search — how far choosing the passage within the page could go.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import uuid
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from amelia_rag import search
from amelia_rag.search import (
    Hit,
    Searcher,
    SearchFilters,
    distinct,
    fuse,
    keyword_ranking,
    openings,
    reading_order,
    vector_ranking,
)
from eval.corpus import SPLITS, questions, words
from eval.tune import EvalDatabase, compare, eval_database

PAGE_DEPTH = 200
_STEM = re.compile(
    r"^\s*(?:how\s+(?:do|can|should|would|could|does)\s+(?:i|we|you|one)\s+|how\s+to\s+|"
    r"what\s+(?:is|are|does|do)\s+(?:the\s+)?|which\s+|why\s+(?:does|do|is)\s+|"
    r"is\s+there\s+a\s+way\s+to\s+|can\s+(?:i|you)\s+|when\s+(?:does|do|is)\s+)",
    re.IGNORECASE,
)


def stripped(query: str) -> str:
    """The question without its stem and question mark ('How do I cluster a table?' -> 'cluster
    a table'); the query itself when it has no such stem."""
    out = _STEM.sub("", query, count=1).rstrip(" ?")
    return out or query


class VariantSearcher(Searcher):
    """The service's hybrid search with the setting's step after fusion."""

    def __init__(self, db: EvalDatabase, setting: dict[str, Any]) -> None:
        super().__init__(db.sessions, db.embedder)
        self.setting = setting

    async def search(
        self, query: str, *, top_k: int, min_score: float, mode: str, filters: SearchFilters
    ) -> list[Hit]:
        vector = await self.embedder.embed_query(query)
        n = max(top_k * search.CANDIDATES_PER_HIT, search.CANDIDATES)
        async with self.sessions() as session, session.begin():
            ranked = await self.ranked(session, query, vector, n, min_score)
            hits = distinct(ranked, top_k, self.merge_chars, search.PER_DOCUMENT)
            if search.SECTION_OPENINGS and hits:
                await openings(session, hits, self.merge_chars)
        return reading_order(hits) if search.READING_ORDER else hits

    async def ranked(
        self, session: AsyncSession, query: str, vector: np.ndarray, n: int, min_score: float
    ) -> list[Hit]:
        """The candidates, best first, as the setting ranks them (`n` per leg)."""
        s = self.setting
        by_vector = await vector_ranking(session, vector, n, None)
        keyword_query = query
        if s.get("forms") and (short := stripped(query)) != query:
            other = await vector_ranking(session, await self.embedder.embed_query(short), n, None)
            by_vector = best_of(by_vector, other, n)
            keyword_query = short
        by_keyword = await keyword_ranking(session, keyword_query, vector, n, None)
        ranked = fuse(by_vector, by_keyword, min_score)
        if s.get("pages"):
            ranked = await page_then_passage(session, query, vector, ranked, s)
        if s.get("neighbours"):
            ranked = smooth(ranked, s["neighbours"], s.get("near", "adjacent"))
        return ranked


def best_of(first: list[Hit], second: list[Hit], limit: int) -> list[Hit]:
    """Two vector rankings as one, each chunk at its better similarity."""
    best: dict[uuid.UUID, Hit] = {}
    for hit in (*first, *second):
        if hit.chunk_id not in best or hit.vector_score > best[hit.chunk_id].vector_score:
            best[hit.chunk_id] = hit
    return sorted(best.values(), key=lambda h: (-h.vector_score, h.order))[:limit]


async def page_keyword_ranking(
    session: AsyncSession, query: str, vector: np.ndarray, pages: list[uuid.UUID]
) -> list[Hit]:
    """The keyword leg over `pages`, its term weights (idf) counted over those pages only."""
    original = search.term_weights

    async def within(session: AsyncSession, terms: list[str]) -> dict[str, float]:
        result = await session.execute(
            text(
                """
                SELECT t.term,
                       (SELECT count(*) FROM chunks c WHERE c.document_id = ANY(:ids)
                        AND c.tsv @@ CAST(t.term AS tsquery)) AS n,
                       (SELECT count(*) FROM chunks c WHERE c.document_id = ANY(:ids)) AS total
                FROM unnest(CAST(:terms AS text[])) AS t(term)
                """
            ),
            {"terms": terms, "ids": pages},
        )
        return {r.term: math.log(1.0 + (max(r.total, 1) - r.n + 0.5) / (r.n + 0.5)) for r in result}

    search.term_weights = within
    try:
        return await keyword_ranking(session, query, vector, PAGE_DEPTH, pages)
    finally:
        search.term_weights = original


async def page_then_passage(
    session: AsyncSession,
    query: str,
    vector: np.ndarray,
    ranked: list[Hit],
    setting: dict[str, Any],
) -> list[Hit]:
    """The global fused ranking fused again with a ranking of the first pages' chunks among
    those pages alone."""
    pages: list[uuid.UUID] = []
    for hit in ranked:
        if hit.document_id not in pages:
            pages.append(hit.document_id)
    pages = pages[: setting["pages"]]
    weight = float(setting.get("weight", 1.0))
    by_vector = await vector_ranking(session, vector, PAGE_DEPTH, pages, exact=True)
    if setting.get("local_idf", True):
        by_keyword = await page_keyword_ranking(session, query, vector, pages)
    else:
        by_keyword = await keyword_ranking(session, query, vector, PAGE_DEPTH, pages)
    local = fuse(by_vector, by_keyword, 0.0)
    scores: dict[uuid.UUID, float] = {}
    hits: dict[uuid.UUID, Hit] = {}
    for ranking, w in ((ranked, 1.0), (local, weight)):
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + w / (search.RRF_K + rank)
            hits.setdefault(hit.chunk_id, hit)
    return rescored(hits, scores)


def smooth(ranked: list[Hit], weight: float, near: str) -> list[Hit]:
    """Each chunk's score plus `weight` × the best score of its neighbours among the ranked."""
    by_place = {(h.document_id, h.chunk_index): h for h in ranked}
    section_best: dict[tuple[uuid.UUID, int], float] = {}
    for h in ranked:
        key = (h.document_id, h.section)
        section_best[key] = max(section_best.get(key, 0.0), h.score)
    steps = (-1,) if near == "previous" else (-1, 1)
    scores: dict[uuid.UUID, float] = {}
    for h in ranked:
        if near == "section":
            best = section_best[(h.document_id, h.section)]
        else:
            around = (by_place.get((h.document_id, h.chunk_index + d)) for d in steps)
            best = max((n.score for n in around if n and n.section == h.section), default=0.0)
        scores[h.chunk_id] = h.score + weight * best
    return rescored({h.chunk_id: h for h in ranked}, scores)


def rescored(hits: dict[uuid.UUID, Hit], scores: dict[uuid.UUID, float]) -> list[Hit]:
    """The hits by their new scores, best first (ties as the service orders them), scaled so
    that the first is 1."""
    order = sorted(scores, key=lambda c: (-scores[c], -hits[c].vector_score, hits[c].order))
    top = scores[order[0]] if order else 1.0
    out = []
    for cid in order:
        hits[cid].score = scores[cid] / top
        out.append(hits[cid])
    return out


async def run_search(settings: list[dict[str, Any]]) -> None:
    async with eval_database() as db:
        await compare(db, settings, lambda setting: VariantSearcher(db, setting))


async def ceiling() -> None:
    """Aggregates only: where the right passage would rank if its page were known."""
    async with eval_database() as db:
        page_of = {name: document for document, name in db.files.items()}
        print("| split | right passage first | in top 3 | in top 4 | in top 5 | mean chars |")
        print("|---|---|---|---|---|---|")
        for split in SPLITS:
            asked = [q for q in questions() if q.split == split]
            ranks: list[int] = []
            chars: list[int] = []
            async with db.sessions() as session:
                for q in asked:
                    page = [page_of[q.file]]
                    vector = await db.embedder.embed_query(q.question)
                    by_vector = await vector_ranking(session, vector, 10_000, page, exact=True)
                    by_keyword = await keyword_ranking(session, q.question, vector, 10_000, page)
                    hits = distinct(fuse(by_vector, by_keyword, 0.0), 5, 3 * 800)
                    hits = reading_order(hits)
                    evidence = words(q.evidence)
                    found = [i for i, h in enumerate(hits, 1) if evidence in words(h.content)]
                    ranks.append(found[0] if found else 99)
                    chars.extend(len(h.content) for h in hits)
            shares = [sum(r <= k for r in ranks) / len(asked) for k in (1, 3, 4, 5)]
            cells = " | ".join(f"{s:.2f}" for s in shares)
            print(f"| {split} | {cells} | {sum(chars) / len(chars):.0f} |", flush=True)


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "ceiling":
        asyncio.run(ceiling())
    elif command == "search":
        asyncio.run(run_search([json.loads(a) for a in sys.argv[2:]] or [{}]))
    else:
        raise SystemExit("usage: python -m eval.pages search [setting …] | ceiling")


if __name__ == "__main__":
    main()
