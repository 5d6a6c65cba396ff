"""`python -m eval.kinds [setting …]`: the question's kind, its identifiers and its phrases as
signals of the hybrid search, measured offline on the database a `make eval` left (issue 16,
session 14).

Each setting is a JSON object; the first is the baseline the others' rose/fell counts compare
with (`{}`: the service as it is):

- `{"kw_plain": 0.5, "kw_ident": 1.0}`: the keyword leg's weight in the fusion chosen by the
  question's kind — one naming an identifier (`snake_case`, `CamelCase`, a dotted or called
  name, an upper-case SQL word) or a plain-language one;
- `{"lam": 0.5}`: each chunk's fused score is its better leg's weighted reciprocal rank plus
  `lam` × the other's (1: the service's sum);
- `{"ident": 0.7, "strict": true}`: a third ranking fused in at weight `ident`: the chunks
  holding one of the question's identifiers verbatim (the tsvector splits `synchronous_commit`
  into two stemmed words any chunk with "synchronous" and "commit" holds), those whose heading
  names it first, then by similarity; `strict` keeps only `snake_case`, dotted and called names;
- `{"phrase": 0.7}`: a third ranking fused in at weight `phrase`: the chunks holding two
  adjacent words of the question as a phrase (`phraseto_tsquery`), by how many such phrases,
  then by similarity;
- `{"page_ranks": "next" | "after"}`: each leg's ranks counted in pages, not passages (a chunk
  of a page already ranked ranks right behind the page's best, or behind its last rank);
- `{"coord": 1, "idf_cap": 5}`: the keyword leg's rank × (the share of the question's idf mass
  the chunk holds)^`coord`, and idf capped.

The part of a dropped hit's passage not shown yet (session 14, kept) is `search.REST_CHARS`:
`python -m eval.tune '{"REST_CHARS": 1000000000}'` measures the search without it.

Printed like eval.tune: the tuning splits (tune, tune2) unless EVAL_SPLIT says otherwise (other
splits: aggregates and how many questions rose/fell only).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
import uuid
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from amelia_rag import search
from amelia_rag.search import (
    _HIT_COLUMNS,
    Hit,
    _hit,
    fuse,
    keyword_ranking,
    passage_ranks,
    query_terms,
    term_weights,
    vector_ranking,
)
from amelia_rag.store import vector_literal
from eval.pages import VariantSearcher, rescored
from eval.tune import compare, eval_database

# Names a developer types exactly: snake_case, dotted (pg_hba.conf, .pgpass), called (now()).
_STRICT = re.compile(r"\.?\b[A-Za-z][\w]*(?:[_.][\w]+)+\b|\b\w+\(\)|(?<!\w)\.\w+")
# ... and CamelCase and upper-case SQL words (SELECT, VACUUM) of two letters or more.
_LOOSE = re.compile(r"\b[a-z]+[A-Z]\w*\b|\b[A-Z]{2,}\b")
_WORD = re.compile(r"[A-Za-z0-9]+")


def identifiers(question: str, strict: bool = False) -> list[str]:
    found = _STRICT.findall(question)
    if not strict:
        found += _LOOSE.findall(question)
    return list(dict.fromkeys(found))


class KindSearcher(VariantSearcher):
    """The service's hybrid search with the setting's legs and fusion."""

    async def ranked(
        self, session: AsyncSession, query: str, vector: np.ndarray, n: int, min_score: float
    ) -> list[Hit]:
        s = self.setting
        by_vector = await vector_ranking(session, vector, n, None)
        if s.get("coord") or s.get("idf_cap"):
            by_keyword = await coord_ranking(
                session, query, vector, n, float(s.get("coord", 0)), s.get("idf_cap")
            )
        else:
            by_keyword = await keyword_ranking(session, query, vector, n, None)
        saved = search.KEYWORD_WEIGHT
        names = identifiers(query, bool(s.get("strict")))
        if "kw_plain" in s or "kw_ident" in s:
            search.KEYWORD_WEIGHT = float(s.get("kw_ident" if names else "kw_plain", saved))
        try:
            if s.get("page_ranks"):
                ranked = page_counted(by_vector, by_keyword, s["page_ranks"])
            elif "lam" in s:
                ranked = partial_max(by_vector, by_keyword, float(s["lam"]))
            else:
                ranked = fuse(by_vector, by_keyword, min_score)
        finally:
            search.KEYWORD_WEIGHT = saved
        if s.get("ident") and names:
            leg = await identifier_ranking(session, names, vector, n)
            return add_leg(ranked, leg, float(s["ident"]))
        if s.get("phrase"):
            leg = await phrase_ranking(session, query, vector, n)
            return add_leg(ranked, leg, float(s["phrase"]))
        return ranked


def partial_max(by_vector: list[Hit], by_keyword: list[Hit], lam: float) -> list[Hit]:
    """Better leg's weighted reciprocal rank + `lam` × the other's."""
    parts: dict[uuid.UUID, list[float]] = {}
    hits: dict[uuid.UUID, Hit] = {}
    for weight, leg in ((search.VECTOR_WEIGHT, by_vector), (search.KEYWORD_WEIGHT, by_keyword)):
        for rank, hit in zip(passage_ranks(leg), leg, strict=True):
            parts.setdefault(hit.chunk_id, []).append(weight / (search.RRF_K + rank))
            hits.setdefault(hit.chunk_id, hit)
    scores = {c: max(p) + lam * (sum(p) - max(p)) for c, p in parts.items()}
    return rescored(hits, scores)


def page_counted(by_vector: list[Hit], by_keyword: list[Hit], step: str) -> list[Hit]:
    """The service's fusion with each leg's ranks counted in pages: a chunk of a page already
    ranked in the leg ranks right behind that page's best chunk (`next`), or behind the last
    rank given to the page (`after`), instead of taking a place of its own."""
    scores: dict[uuid.UUID, float] = {}
    hits: dict[uuid.UUID, Hit] = {}
    for weight, leg in ((search.VECTOR_WEIGHT, by_vector), (search.KEYWORD_WEIGHT, by_keyword)):
        places: dict[uuid.UUID, int] = {}
        count = 0
        for hit in leg:
            if hit.document_id in places:
                rank = places[hit.document_id] + 1
                if step == "after":
                    places[hit.document_id] = rank
            else:
                count += 1
                places[hit.document_id] = rank = count
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight / (search.RRF_K + rank)
            hits.setdefault(hit.chunk_id, hit)
    return rescored(hits, scores)


def add_leg(ranked: list[Hit], leg: list[Hit], weight: float) -> list[Hit]:
    """`ranked` (fused, scored) with a third ranking's reciprocal ranks added at `weight`."""
    best = (search.VECTOR_WEIGHT + search.KEYWORD_WEIGHT) / (search.RRF_K + 1)
    scores = {h.chunk_id: h.score * best for h in ranked}
    hits = {h.chunk_id: h for h in ranked}
    for rank, hit in zip(passage_ranks(leg), leg, strict=True):
        scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight / (search.RRF_K + rank)
        hits.setdefault(hit.chunk_id, hit)
    return rescored(hits, scores)


async def identifier_ranking(
    session: AsyncSession, names: list[str], vector: np.ndarray, limit: int
) -> list[Hit]:
    """Chunks holding one of `names` verbatim: named in their heading first, then by cosine."""
    patterns = [rf"(^|[^A-Za-z0-9_]){re.escape(n)}($|[^A-Za-z0-9_])" for n in names]
    result = await session.execute(
        text(
            f"""
            SELECT {_HIT_COLUMNS},
                   1 - (c.embedding <=> CAST(:q AS vector)) AS similarity,
                   EXISTS (SELECT 1 FROM unnest(CAST(:p AS text[])) p
                           WHERE c.heading_path[array_length(c.heading_path, 1)] ~ p) AS named
            FROM chunks c JOIN documents d ON d.id = c.document_id
            WHERE c.embedding IS NOT NULL AND c.content ~ ANY(CAST(:p AS text[]))
            ORDER BY named DESC, similarity DESC, c.document_id, c.chunk_index
            LIMIT :n
            """
        ),
        {"q": vector_literal(vector), "p": patterns, "n": limit},
    )
    return [_hit(r, float(r.similarity), float(r.similarity)) for r in result.all()]


async def coord_ranking(
    session: AsyncSession,
    query: str,
    vector: np.ndarray,
    limit: int,
    coord: float,
    idf_cap: float | None,
) -> list[Hit]:
    """The keyword leg with each chunk's rank × (its share of the query's idf mass)^`coord`
    (Lucene's coordination factor, weighted), and idf capped at `idf_cap`."""
    terms = await query_terms(session, query)
    if not terms:
        return []
    weights = await term_weights(session, terms)
    if idf_cap:
        weights = {t: min(w, float(idf_cap)) for t, w in weights.items()}
    total = sum(weights.values()) or 1.0
    params: dict[str, Any] = {f"t{i}": t for i, t in enumerate(terms)}
    params.update({f"w{i}": weights.get(t, 0.0) for i, t in enumerate(terms)})
    params.update({"any": " | ".join(f"({t})" for t in terms), "n": limit})
    params.update({"weights": search.TS_WEIGHTS, "q": vector_literal(vector)})
    rank = " + ".join(
        f"CAST(:w{i} AS float8) * ts_rank(CAST(:weights AS float4[]), c.tsv,"
        f" CAST(:t{i} AS tsquery), 1)"
        for i in range(len(terms))
    )
    share = " + ".join(
        f"CAST(:w{i} AS float8) * (c.tsv @@ CAST(:t{i} AS tsquery))::int" for i in range(len(terms))
    )
    result = await session.execute(
        text(
            f"""
            WITH matched AS MATERIALIZED (
                SELECT c.id, ({rank}) * power(({share}) / {total}, {coord}) AS rank
                FROM chunks c
                WHERE c.tsv @@ CAST(:any AS tsquery)
                ORDER BY rank DESC, c.document_id, c.chunk_index
                LIMIT :n
            )
            SELECT {_HIT_COLUMNS}, m.rank,
                   COALESCE(1 - (c.embedding <=> CAST(:q AS vector)), 0.0) AS similarity,
                   c.embedding IS NOT NULL AS embedded
            FROM matched m JOIN chunks c ON c.id = m.id JOIN documents d ON d.id = c.document_id
            ORDER BY m.rank DESC, c.document_id, c.chunk_index
            """
        ),
        params,
    )
    return [_hit(r, float(r.rank), float(r.similarity), r.embedded) for r in result.all()]


async def phrase_ranking(
    session: AsyncSession, query: str, vector: np.ndarray, limit: int
) -> list[Hit]:
    """Chunks holding adjacent words of the question as a phrase, by phrases held, then cosine."""
    words = _WORD.findall(query)
    pairs = [f"{a} {b}" for a, b in itertools.pairwise(words)]
    result = await session.execute(
        text(
            "SELECT DISTINCT CAST(phraseto_tsquery('english', p) AS text) FROM unnest(CAST(:p"
            " AS text[])) p WHERE CAST(phraseto_tsquery('english', p) AS text) LIKE '%<->%'"
        ),
        {"p": pairs},
    )
    phrases = [r[0] for r in result]
    if not phrases:
        return []
    matched = " + ".join(f"(c.tsv @@ CAST(:t{i} AS tsquery))::int" for i in range(len(phrases)))
    params: dict[str, Any] = {f"t{i}": p for i, p in enumerate(phrases)}
    params.update({"q": vector_literal(vector), "n": limit})
    params["any"] = " | ".join(f"({p})" for p in phrases)
    result = await session.execute(
        text(
            f"""
            SELECT {_HIT_COLUMNS}, {matched} AS held,
                   1 - (c.embedding <=> CAST(:q AS vector)) AS similarity
            FROM chunks c JOIN documents d ON d.id = c.document_id
            WHERE c.embedding IS NOT NULL AND c.tsv @@ CAST(:any AS tsquery)
            ORDER BY held DESC, similarity DESC, c.document_id, c.chunk_index
            LIMIT :n
            """
        ),
        params,
    )
    return [_hit(r, float(r.similarity), float(r.similarity)) for r in result.all()]


async def run(settings: list[dict[str, Any]]) -> None:
    async with eval_database() as db:
        await compare(db, settings, lambda setting: KindSearcher(db, setting))


def main() -> None:
    asyncio.run(run([json.loads(a) for a in sys.argv[1:]] or [{}]))


if __name__ == "__main__":
    main()
