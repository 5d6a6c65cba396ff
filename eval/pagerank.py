"""`python -m eval.pagerank [setting …]`: page-level legs, other fusions and how the five
places are shared between pages, measured offline on the database a `make eval` left (issue
16, session 13).

Each setting is a JSON object; the first is the baseline the others' rose/fell counts compare
with (`{}`: the service as it is). Fusion of the two chunk legs (default: the service's):

- `{"dedupe": "next" | "share" | "drop"}`: each leg's ranks counted in passages (a chunk whose
  passage overlaps a better one's ranks right behind it, at its rank, or not at all); `next`
  is what the service now does (search.passage_ranks);
- `{"a": 0.6, "rrf": 0}`: score fusion, a × min-max scaled similarity + (1 − a) × min-max
  scaled keyword rank, plus `rrf` × the reciprocal rank fusion score.

Page legs (`w` > 0): each candidate chunk's score (scaled so that the first is 1) gets `w` ×
its page's score, a weighted reciprocal rank fusion (constant `k`, default 10) of:

- `pv`: the page's centroid (mean of its chunks' embeddings, normalised) by cosine to the query;
- `p0`: the page's first chunk (its title and opening) by cosine to the query;
- `pk`: BM25 over whole pages (each page's lexeme counts summed over its chunks' tsvectors; the
  query's terms as the service's keyword leg reads them; `k1` 1.2, `b` 0.75);
- `pt`: the page's title and section headings (every chunk's heading path) matched like `pk`;
- `pc`: the page's chunks in the fused candidates, by the sum of their fused scores (CombSUM;
  `top` of them at most, default 3).

Places: `per_doc` overrides PER_DOCUMENT; `close` (0..1) lifts the limit when no other page's
best candidate scores within `close` × the first; `dominant` (0..1) gives the first page the
first `m` places, chosen by its own ranking, under the same condition, and `slots1` refills the
first page's places from its own ranking; `mmr` (λ) re-orders the first `depth` candidates by
maximal marginal relevance (chunk embeddings' cosine; `same_page`: only against passages of the
same page); `merge` sets merge_chars.

Printed like eval.tune: the tuning splits (tune, tune2) unless EVAL_SPLIT says otherwise (other
splits: aggregates and how many questions rose/fell only).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import text

from amelia_rag import search
from amelia_rag.search import (
    Hit,
    SearchFilters,
    distinct,
    fuse,
    keyword_ranking,
    query_terms,
    reading_order,
    vector_ranking,
)
from eval.pages import VariantSearcher, rescored
from eval.tune import EvalDatabase, compare, eval_database

_LEXEME = re.compile(r"'((?:[^']|'')+)'(?::([0-9A-D,]+))?")
_TERM = re.compile(r"'((?:[^']|'')+)'")


def lexeme_counts(tsv: str) -> Counter[str]:
    """A tsvector's text form as lexeme → number of positions (1 when positions are absent)."""
    out: Counter[str] = Counter()
    for lexeme, positions in _LEXEME.findall(tsv):
        out[lexeme.replace("''", "'")] += len(positions.split(",")) if positions else 1
    return out


class Bm25:
    """Okapi BM25 over a few long documents given as lexeme counts."""

    def __init__(self, docs: dict[uuid.UUID, Counter[str]], k1: float = 1.2, b: float = 0.75):
        self.docs, self.k1, self.b = docs, k1, b
        self.length = {d: sum(c.values()) for d, c in docs.items()}
        self.mean = sum(self.length.values()) / max(len(docs), 1)
        frequency: Counter[str] = Counter()
        for counts in docs.values():
            frequency.update(counts.keys())
        n = len(docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}

    def rank(self, terms: list[str]) -> list[uuid.UUID]:
        scores: dict[uuid.UUID, float] = {}
        for doc, counts in self.docs.items():
            norm = self.k1 * (1 - self.b + self.b * self.length[doc] / self.mean)
            s = sum(
                self.idf.get(t, 0.0) * counts[t] * (self.k1 + 1) / (counts[t] + norm)
                for t in terms
                if counts.get(t)
            )
            if s > 0:
                scores[doc] = s
        return sorted(scores, key=lambda d: (-scores[d], str(d)))


@dataclass
class Pages:
    """Page-level data of the whole corpus, read once."""

    ids: list[uuid.UUID]
    centroids: np.ndarray
    openings: np.ndarray
    words: Bm25
    titles: Bm25


async def load_pages(db: EvalDatabase) -> Pages:
    async with db.sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT document_id, chunk_index, embedding::text AS e, tsv::text AS tv,"
                    " array_to_string(heading_path, ' ') AS h FROM chunks"
                )
            )
        ).all()
        titles = {
            r.id: r.title for r in await session.execute(text("SELECT id, title FROM documents"))
        }
        heading_tsv = {}
        for r in rows:
            heading_tsv.setdefault(r.document_id, set()).add(r.h)
        tsv_of: dict[uuid.UUID, Counter[str]] = {}
        for doc, heads in heading_tsv.items():
            t = await session.scalar(
                text("SELECT to_tsvector('english', :t)::text"),
                {"t": " ".join([titles.get(doc, ""), *sorted(heads)])},
            )
            tsv_of[doc] = lexeme_counts(t or "")
    sums: dict[uuid.UUID, np.ndarray] = {}
    opening: dict[uuid.UUID, tuple[int, np.ndarray]] = {}
    counts: dict[uuid.UUID, Counter[str]] = {}
    for r in rows:
        if r.e is not None:
            v = np.array(json.loads(r.e), dtype=np.float32)
            sums[r.document_id] = sums.get(r.document_id, 0) + v
            if r.document_id not in opening or r.chunk_index < opening[r.document_id][0]:
                opening[r.document_id] = (r.chunk_index, v)
        counts.setdefault(r.document_id, Counter()).update(lexeme_counts(r.tv or ""))
    ids = sorted(sums, key=str)
    centroids = np.stack([sums[d] / np.linalg.norm(sums[d]) for d in ids])
    openings = np.stack([opening[d][1] / np.linalg.norm(opening[d][1]) for d in ids])
    return Pages(ids, centroids, openings, Bm25(counts), Bm25(tsv_of))


def page_terms(tsquery_terms: list[str]) -> list[str]:
    """The lexemes of the keyword leg's terms (a term may be 'pg' & 'stat' & 'activ')."""
    out: list[str] = []
    for term in tsquery_terms:
        out.extend(m.replace("''", "'") for m in _TERM.findall(term))
    return list(dict.fromkeys(out))


class PageSearcher(VariantSearcher):
    """The service's hybrid search with the setting's fusion, page legs and place sharing."""

    def __init__(self, db: EvalDatabase, pages: Pages, setting: dict[str, Any]) -> None:
        super().__init__(db, setting)
        self.merge_chars = int(setting.get("merge", self.merge_chars))
        self.pages = pages

    async def search(
        self, query: str, *, top_k: int, min_score: float, mode: str, filters: SearchFilters
    ) -> list[Hit]:
        s = self.setting
        vector = await self.embedder.embed_query(query)
        n = max(top_k * search.CANDIDATES_PER_HIT, search.CANDIDATES)
        async with self.sessions() as session, session.begin():
            by_vector = await vector_ranking(session, vector, n, None)
            by_keyword = await keyword_ranking(session, query, vector, n, None)
            if s.get("dedupe"):
                ranked = fuse_passages(by_vector, by_keyword, s["dedupe"])
            elif s.get("a") is not None:
                ranked = convex(by_vector, by_keyword, float(s["a"]), s.get("rrf", 0.0))
            else:
                ranked = fuse(by_vector, by_keyword, min_score)
            terms = page_terms(await query_terms(session, query))
            if s.get("w"):
                ranked = self.with_pages(ranked, vector, terms)
            if s.get("mmr"):
                ranked = await mmr(
                    session, ranked, float(s["mmr"]), int(s.get("depth", 100)), s.get("same_page")
                )
            per_doc = s.get("per_doc", search.PER_DOCUMENT)
            if ranked and (s.get("dominant") or s.get("slots1")):
                return await self.first_page(session, query, vector, ranked, top_k, per_doc)
        if s.get("close"):
            hits = shared(ranked, top_k, self.merge_chars, per_doc, float(s["close"]))
        else:
            hits = distinct(ranked, top_k, self.merge_chars, per_doc)
        return reading_order(hits) if search.READING_ORDER else hits

    async def first_page(
        self,
        session: Any,
        query: str,
        vector: np.ndarray,
        ranked: list[Hit],
        top_k: int,
        per_doc: int | None,
    ) -> list[Hit]:
        """The first page's passages chosen by its own ranking (its chunks ranked among
        themselves by both legs, fused): in the places the global ranking gives it (`slots1`),
        or in the first `m` places when no other page scores within `dominant` × the first."""
        s = self.setting
        first = ranked[0].document_id
        rival = max((h.score for h in ranked if h.document_id != first), default=0.0)
        overall = distinct(ranked, top_k, self.merge_chars, per_doc)
        dominant = s.get("dominant") and rival < float(s["dominant"]) * ranked[0].score
        if not dominant and not s.get("slots1"):
            return reading_order(overall)
        page = [first]
        by_vector = await vector_ranking(session, vector, 10_000, page, exact=True)
        by_keyword = await keyword_ranking(session, query, vector, 10_000, page)
        local = fuse(by_vector, by_keyword, 0.0)
        if dominant:
            mine = distinct(local, int(s.get("m", 5)), self.merge_chars, None)
            others = [h for h in ranked if h.document_id != first]
            out = mine + distinct(others, top_k - len(mine), self.merge_chars, per_doc)
        else:
            places = [i for i, h in enumerate(overall) if h.document_id == first]
            mine = distinct(local, len(places), self.merge_chars, None)
            out = list(overall)
            for i, h in zip(places, mine, strict=False):
                out[i] = h
        scores = sorted((h.score for h in overall), reverse=True)
        for h, score in zip(out, scores, strict=False):
            h.score = score
        return reading_order(out[:top_k])

    def with_pages(self, ranked: list[Hit], vector: np.ndarray, terms: list[str]) -> list[Hit]:
        s = self.setting
        k = float(s.get("k", 10))
        legs: list[tuple[float, list[uuid.UUID]]] = []
        if s.get("pv"):
            cos = self.pages.centroids @ np.asarray(vector, dtype=np.float32)
            legs.append((s["pv"], [self.pages.ids[i] for i in np.argsort(-cos, kind="stable")]))
        if s.get("p0"):
            cos = self.pages.openings @ np.asarray(vector, dtype=np.float32)
            legs.append((s["p0"], [self.pages.ids[i] for i in np.argsort(-cos, kind="stable")]))
        if s.get("pk"):
            legs.append((s["pk"], self.pages.words.rank(terms)))
        if s.get("pt"):
            legs.append((s["pt"], self.pages.titles.rank(terms)))
        if s.get("pc"):
            sums: dict[uuid.UUID, list[float]] = {}
            for h in ranked:
                sums.setdefault(h.document_id, []).append(h.score)
            top = int(s.get("top", 3))
            total = {d: sum(sorted(v, reverse=True)[:top]) for d, v in sums.items()}
            legs.append((s["pc"], sorted(total, key=lambda d: (-total[d], str(d)))))
        page: dict[uuid.UUID, float] = {}
        for weight, order in legs:
            for rank, doc in enumerate(order, start=1):
                page[doc] = page.get(doc, 0.0) + weight / (k + rank)
        best = sum(w for w, _ in legs) / (k + 1)
        top_score = ranked[0].score if ranked else 1.0
        scores = {
            h.chunk_id: h.score / top_score + s["w"] * page.get(h.document_id, 0.0) / best
            for h in ranked
        }
        return rescored({h.chunk_id: h for h in ranked}, scores)


async def mmr(
    session: Any, ranked: list[Hit], lam: float, depth: int, same_page: bool = False
) -> list[Hit]:
    """Maximal marginal relevance over the first `depth` candidates: each next one maximises
    lam × its fused score − (1 − lam) × its greatest cosine to the ones already taken (of its
    own page only, with `same_page`)."""
    head, tail = ranked[:depth], ranked[depth:]
    rows = await session.execute(
        text("SELECT id, embedding::text AS e FROM chunks WHERE id = ANY(:ids)"),
        {"ids": [h.chunk_id for h in head]},
    )
    vecs = {r.id: np.array(json.loads(r.e), dtype=np.float32) for r in rows if r.e}
    for v in vecs.values():
        v /= np.linalg.norm(v)
    top = head[0].score if head else 1.0
    left, out = list(head), []
    nearest = {h.chunk_id: 0.0 for h in head}
    while left:
        best = max(left, key=lambda h: lam * h.score / top - (1 - lam) * nearest[h.chunk_id])
        left.remove(best)
        out.append(best)
        bv = vecs.get(best.chunk_id)
        if bv is not None:
            for h in left:
                hv = vecs.get(h.chunk_id)
                if same_page and h.document_id != best.document_id:
                    continue
                if hv is not None:
                    nearest[h.chunk_id] = max(nearest[h.chunk_id], float(hv @ bv))
    scores = sorted((h.score for h in head), reverse=True)
    for h, score in zip(out, scores, strict=True):
        h.score = score
    return out + tail


def leg_ranks(leg: list[Hit], how: str) -> dict[uuid.UUID, int]:
    """Each chunk's rank in a leg counting passages, not chunks: a chunk whose passage overlaps
    a better one's (same document) takes that one's rank (`share`) or the next (`next`) or none
    (`drop`: it counts in the other leg only), and
    only a new passage moves the count on."""
    ranks: dict[uuid.UUID, int] = {}
    seen: list[tuple[Hit, int]] = []
    count = 0
    for h in leg:
        earlier = next((r for k, r in seen if k.overlaps(h)), None)
        if earlier is None:
            count += 1
            seen.append((h, count))
            ranks[h.chunk_id] = count
        elif how != "drop":
            ranks[h.chunk_id] = earlier if how == "share" else earlier + 1
    return ranks


def fuse_passages(by_vector: list[Hit], by_keyword: list[Hit], how: str) -> list[Hit]:
    """The service's fusion with leg ranks counted in passages (see leg_ranks)."""
    k, wv, wk = search.RRF_K, search.VECTOR_WEIGHT, search.KEYWORD_WEIGHT
    hits: dict[uuid.UUID, Hit] = {}
    scores: dict[uuid.UUID, float] = {}
    for leg, weight in ((by_vector, wv), (by_keyword, wk)):
        for cid, rank in leg_ranks(leg, how).items():
            scores[cid] = scores.get(cid, 0.0) + weight / (k + rank)
        for h in leg:
            hits.setdefault(h.chunk_id, h)
    best = (wv + wk) / (k + 1)
    order = sorted(scores, key=lambda c: (-scores[c], -hits[c].vector_score, hits[c].order))
    out = []
    for cid in order:
        hits[cid].score = scores[cid] / best
        out.append(hits[cid])
    return out


def convex(by_vector: list[Hit], by_keyword: list[Hit], a: float, rrf: float) -> list[Hit]:
    """Score fusion: a × the similarity and (1 − a) × the keyword rank, each min-max scaled over
    its leg's candidates (a chunk below a leg's candidates counts 0 there); plus `rrf` × the
    service's reciprocal rank fusion score (scaled so that its first is 1)."""
    hits: dict[uuid.UUID, Hit] = {}
    for h in (*by_vector, *by_keyword):
        hits.setdefault(h.chunk_id, h)
    sims = {h.chunk_id: h.vector_score for h in (*by_vector, *by_keyword)}
    low_v = min((h.vector_score for h in by_vector), default=0.0)
    high_v = max(sims.values(), default=1.0)
    ranks = {h.chunk_id: h.score for h in by_keyword}
    low_k = min(ranks.values(), default=0.0)
    high_k = max(ranks.values(), default=1.0)
    rrf_scores = {h.chunk_id: h.score for h in fuse(list(by_vector), list(by_keyword), 0.0)}
    scores = {}
    for cid in hits:
        v = max(sims.get(cid, low_v) - low_v, 0.0) / max(high_v - low_v, 1e-9)
        k = (ranks[cid] - low_k) / max(high_k - low_k, 1e-9) if cid in ranks else 0.0
        scores[cid] = a * v + (1 - a) * k + rrf * rrf_scores.get(cid, 0.0)
    return rescored(hits, scores)


def shared(
    ranked: list[Hit], top_k: int, merge_chars: int, per_doc: int | None, close: float
) -> list[Hit]:
    """Like `distinct`, but a page keeps passages beyond `per_doc` while no other page's
    best candidate scores within `close` × the first hit's score."""
    if not ranked:
        return []
    first = ranked[0]
    rival = max((h.score for h in ranked if h.document_id != first.document_id), default=0.0)
    if rival < close * first.score:
        return distinct(ranked, top_k, merge_chars, None)
    return distinct(ranked, top_k, merge_chars, per_doc)


async def run(settings: list[dict[str, Any]]) -> None:
    async with eval_database() as db:
        pages = await load_pages(db)
        await compare(db, settings, lambda setting: PageSearcher(db, pages, setting))


def main() -> None:
    asyncio.run(run([json.loads(a) for a in sys.argv[1:]] or [{}]))


if __name__ == "__main__":
    main()
