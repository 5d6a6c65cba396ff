"""`python -m eval.headings [setting …]`: an entry's heading embedded alone as a signal of the
hybrid search, and a long section's windows counted as one place in each leg, measured offline
on the database a `make eval` left (issue 16, session 16).

Every section's last heading (a definition entry's signature — `FULL`, `FORMAT`,
`track_activity_query_size (integer)` — or a section's title) is embedded alone, without the page
or the text around it (short texts: a minute of the model for the corpus's sections, cached).
Each setting is a JSON object; the first is the baseline the others' rose/fell counts compare
with (`{}`: the service as it is):

- `{"head": 0.5}`: a third ranking fused in at weight `head`: the chunks by the cosine of their
  section's heading to the question (then by their own cosine);
- `{"boost": 0.3}`: the vector leg ranks chunks by their cosine + `boost` × their heading's;
- `{"clean": true}`: the heading without its section number ("9.9.2. date_trunc" → "date_trunc")
  and a DocBook entry's type in parentheses kept;
- `{"path": 2}`: the last two headings of the path embedded (`Parameters › FULL`);
- `{"bare": "max" | "only" | "sum", "bw": 0.5}`: every chunk's own text embedded alone too
  (no title, no heading path: a definition entry's description without the page around it);
  the vector leg ranks chunks by the better of the two cosines, by the bare one only, or by
  the usual cosine + `bw` × the bare one; `leg`: a third ranking by the bare cosine fused in at
  weight `bw`;
- `{"hterms": 0.5}`: a third ranking fused in at weight `hterms`: the keyword leg over the
  headings alone (the chunks whose heading path holds the question's terms, BM25-like);
- `{"section_ranks": true}`: each leg's ranks counted in sections, not passages (a chunk of a
  section already ranked in the leg ranks right behind that section's rank): a big table's or a
  long section's windows take one place of a leg.

Printed like eval.tune: the tuning splits (tune, tune2) unless EVAL_SPLIT says otherwise (other
splits: aggregates and how many questions rose/fell only).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from amelia_rag import search
from amelia_rag.search import _HIT_COLUMNS, Hit, _hit, fuse, keyword_ranking, vector_ranking
from eval.kinds import add_leg
from eval.pages import VariantSearcher, rescored
from eval.tune import EvalDatabase, compare, eval_database

_NUMBER = re.compile(r"^\s*(?:[A-Z]?\d+(?:\.\d+)*\.?|[A-Z]\.\d+(?:\.\d+)*\.?)\s+")


def heading_text(path: list[str], depth: int, clean: bool) -> str:
    """What is embedded for a section: its last `depth` headings."""
    parts = [p for p in path[-depth:] if p]
    if clean:
        parts = [_NUMBER.sub("", p) for p in parts]
    return " › ".join(parts)


class Corpus:
    """Every chunk's row, its embedding, and its section's heading embedding (per variant)."""

    def __init__(self, rows: list[Any], vectors: np.ndarray) -> None:
        self.rows = rows
        self.vectors = vectors
        self.heads: dict[tuple[int, bool], np.ndarray] = {}

    @classmethod
    async def load(cls, db: EvalDatabase) -> Corpus:
        async with db.sessions() as session:
            result = await session.execute(
                text(
                    f"SELECT {_HIT_COLUMNS}, c.content AS content_text, c.embedding::text AS vec"
                    " FROM chunks c"
                    " JOIN documents d ON d.id = c.document_id"
                    " WHERE c.embedding IS NOT NULL ORDER BY c.document_id, c.chunk_index"
                )
            )
            rows = list(result.all())
        vectors = np.array([np.array(json.loads(r.vec), dtype=np.float32) for r in rows])
        return cls(rows, vectors)

    async def bare_vectors(self, db: EvalDatabase) -> np.ndarray:
        """Every chunk's own text embedded alone (no title, no heading path), normalised."""
        if (0, False) not in self.heads:
            texts = [r.content_text for r in self.rows]
            print(f"embedding {len(texts)} bare chunk texts", flush=True)
            vecs = await db.embedder.embed(texts)
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)
            self.heads[(0, False)] = vecs
        return self.heads[(0, False)]

    async def head_vectors(self, db: EvalDatabase, depth: int, clean: bool) -> np.ndarray:
        key = (depth, clean)
        if key not in self.heads:
            texts = [
                heading_text(list(r.heading_path or []), depth, clean) or "" for r in self.rows
            ]
            distinct = sorted(set(texts))
            print(f"embedding {len(distinct)} headings ({depth}, clean={clean})", flush=True)
            vecs = await db.embedder.embed(distinct)
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)
            index = {t: i for i, t in enumerate(distinct)}
            self.heads[key] = vecs[[index[t] for t in texts]]
        return self.heads[key]

    def ranking(self, scores: np.ndarray, cosines: np.ndarray, n: int) -> list[Hit]:
        order = np.lexsort((-cosines, -scores))[:n]
        return [_hit(self.rows[i], float(scores[i]), float(cosines[i])) for i in order]


def section_counted(by_vector: list[Hit], by_keyword: list[Hit]) -> list[Hit]:
    """The service's fusion with each leg's ranks counted in sections."""
    scores: dict[uuid.UUID, float] = {}
    hits: dict[uuid.UUID, Hit] = {}
    for weight, leg in ((search.VECTOR_WEIGHT, by_vector), (search.KEYWORD_WEIGHT, by_keyword)):
        places: dict[tuple[uuid.UUID, int], int] = {}
        passages: list[tuple[Hit, int]] = []
        for hit in leg:
            key = (hit.document_id, hit.section)
            above = next((r for kept, r in passages if kept.overlaps(hit)), None)
            if key in places:
                rank = places[key] + 1
            elif above is not None:
                rank = above + 1
            else:
                rank = len(places) + 1
                places[key] = rank
            passages.append((hit, rank))
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight / (search.RRF_K + rank)
            hits.setdefault(hit.chunk_id, hit)
    return rescored(hits, scores)


class HeadingSearcher(VariantSearcher):
    corpus: Corpus
    db: EvalDatabase

    async def ranked(
        self, session: AsyncSession, query: str, vector: np.ndarray, n: int, min_score: float
    ) -> list[Hit]:
        s = self.setting
        q = vector / max(float(np.linalg.norm(vector)), 1e-9)
        by_keyword = await keyword_ranking(session, query, vector, n, None)
        heads = None
        if s.get("head") or s.get("boost"):
            heads = await self.corpus.head_vectors(
                self.db, int(s.get("path", 1)), bool(s.get("clean"))
            )
        cosines = self.corpus.vectors @ q
        bare = None
        if s.get("bare"):
            bare = (await self.corpus.bare_vectors(self.db)) @ q
            mixed = {"max": np.maximum(cosines, bare), "only": bare, "leg": cosines}.get(
                s["bare"], cosines + float(s.get("bw", 0.5)) * bare
            )
            by_vector = self.corpus.ranking(mixed, cosines, n)
        elif s.get("boost"):
            assert heads is not None
            by_vector = self.corpus.ranking(cosines + float(s["boost"]) * (heads @ q), cosines, n)
        else:
            by_vector = await vector_ranking(session, vector, n, None)
        if s.get("section_ranks"):
            ranked = section_counted(by_vector, by_keyword)
        else:
            ranked = fuse(by_vector, by_keyword, min_score)
        if s.get("bare") == "leg":
            assert bare is not None
            ranked = add_leg(ranked, self.corpus.ranking(bare, cosines, n), float(s["bw"]))
        if s.get("hterms"):
            saved = search.TS_WEIGHTS
            search.TS_WEIGHTS = [0.0, 0.0, 0.0, 1.0]
            try:
                leg = await keyword_ranking(session, query, vector, n, None)
            finally:
                search.TS_WEIGHTS = saved
            leg = [h for h in leg if h.score > 0]
            ranked = add_leg(ranked, leg, float(s["hterms"]))
        if s.get("head"):
            assert heads is not None
            leg = self.corpus.ranking(heads @ q, cosines, n)
            ranked = add_leg(ranked, leg, float(s["head"]))
        return ranked


async def run(settings: list[dict[str, Any]]) -> None:
    async with eval_database() as db:
        corpus = await Corpus.load(db)

        def searcher(setting: dict[str, Any]) -> HeadingSearcher:
            s = HeadingSearcher(db, setting)
            s.corpus, s.db = corpus, db
            return s

        await compare(db, settings, searcher)


async def embed_bare() -> None:
    async with eval_database() as db:
        corpus = await Corpus.load(db)
        await corpus.bare_vectors(db)
        print(f"computed {db.embedder.computed}")


def main() -> None:
    if sys.argv[1:] == ["embed"]:
        asyncio.run(embed_bare())
        return
    asyncio.run(run([json.loads(a) for a in sys.argv[1:]] or [{}]))


if __name__ == "__main__":
    main()
