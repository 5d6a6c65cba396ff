"""`python -m eval.misses [id …]`: why the tuning splits' misses are missed (issue 16, session 14).

For every tune / tune2 question whose right passage is not in the service's hybrid top 5 (or the
ids given, tuning splits only: held-out and fresh are never looked at question by question),
prints on the database a `make eval` left:

- the service's first five hits: page, heading path, and each one's rank in the vector and the
  keyword leg (passage-counted, as the fusion reads them);
- the right page: its chunks and sections, and its best rank in each leg and in the fusion
  (the place among distinct pages, too);
- the evidence chunks (the right page's chunks whose passage holds the evidence): their rank in
  each leg (chunk and passage ranks) and cosine, and the rank of the best of them;
- the query's terms with their idf, which of them the evidence chunk and the first hit hold;
- identifier-like tokens of the question (`snake_case`, `CamelCase`, upper-case SQL words,
  dotted or parenthesised names): on how many pages each occurs, and whether on the right page
  and in the evidence passage.

The groups written into docs/rag.md (session 14) were read off this output.
"""

from __future__ import annotations

import asyncio
import re
import sys
import uuid

from sqlalchemy import text

from amelia_rag import search
from amelia_rag.search import (
    Hit,
    Searcher,
    SearchFilters,
    fuse,
    keyword_ranking,
    passage_ranks,
    query_terms,
    term_weights,
    vector_ranking,
)
from eval.corpus import Question, questions, words
from eval.kinds import identifiers
from eval.tune import TOP_K, TUNING, EvalDatabase, eval_database

DEPTH = 1000


def leg_ranks(leg: list[Hit]) -> dict[uuid.UUID, tuple[int, int]]:
    """chunk id → (chunk rank, passage rank) in a leg."""
    return {
        h.chunk_id: (i, p)
        for i, (h, p) in enumerate(zip(leg, passage_ranks(leg), strict=True), start=1)
    }


def page_rank(ranked: list[Hit], page: uuid.UUID) -> tuple[int, int]:
    """(first chunk rank, place among distinct pages) of `page` in a ranking; 0 when absent."""
    seen: list[uuid.UUID] = []
    for i, h in enumerate(ranked, start=1):
        if h.document_id not in seen:
            seen.append(h.document_id)
        if h.document_id == page:
            return i, len(seen)
    return 0, 0


def shown(ranks: dict[uuid.UUID, tuple[int, int]], chunk: uuid.UUID) -> str:
    r = ranks.get(chunk)
    return f"{r[0]}/{r[1]}" if r else "-"


async def explain(db: EvalDatabase, q: Question, page_of: dict[str, uuid.UUID]) -> None:
    page = page_of[q.file]
    vector = await db.embedder.embed_query(q.question)
    searcher = Searcher(db.sessions, db.embedder)
    hits = await searcher.search(
        q.question, top_k=TOP_K, min_score=0.0, mode="hybrid", filters=SearchFilters()
    )
    evidence = words(q.evidence)
    async with db.sessions() as session, session.begin():
        by_vector = await vector_ranking(session, vector, DEPTH, None, exact=True)
        by_keyword = await keyword_ranking(session, q.question, vector, DEPTH, None)
        fused = fuse(list(by_vector), list(by_keyword), 0.0)
        terms = await query_terms(session, q.question)
        idf = await term_weights(session, terms)
        rows = (
            await session.execute(
                text(
                    "SELECT id, chunk_index, section, heading_path, content,"
                    " COALESCE(passage, content) AS passage, tsv::text AS tsv"
                    " FROM chunks WHERE document_id = :d ORDER BY chunk_index"
                ),
                {"d": page},
            )
        ).all()
        spread = {}
        for ident in identifiers(q.question):
            spread[ident] = await session.scalar(
                text(
                    "SELECT count(DISTINCT document_id) FROM chunks"
                    " WHERE content ILIKE '%' || :i || '%'"
                ),
                {"i": ident},
            )
    vr, kr = leg_ranks(by_vector), leg_ranks(by_keyword)
    fr = {h.chunk_id: i for i, h in enumerate(fused, start=1)}
    holding = [r for r in rows if evidence in words(r.passage)]
    strict = {r.id for r in holding if evidence in words(r.content)}
    sections = len({r.section for r in rows})
    print(f"\n### {q.id} [{q.split}] {q.question}")
    print(f"  right: {q.file} #{q.section} ({len(rows)} chunks, {sections} sections)")
    print(f"  evidence: {q.evidence!r}")
    rank = next((i for i, h in enumerate(hits, 1) if h.document_id == page), 0)
    prank = next(
        (
            i
            for i, h in enumerate(hits, 1)
            if h.document_id == page and evidence in words(h.content)
        ),
        0,
    )
    print(f"  service: right page at {rank or '>10'}, right passage at {prank or '>10'}")
    for name, leg in (("vector", by_vector), ("keyword", by_keyword), ("fused", fused)):
        chunk, place = page_rank(leg, page)
        print(f"  {name}: right page's first chunk {chunk or '-'}, page place {place or '-'}")
    print("  top 5:")
    for i, h in enumerate(hits[:5], 1):
        where = " › ".join(h.heading_path)[-80:]
        mark = "*" if h.document_id == page else " "
        print(
            f"   {mark}{i}. {db.files.get(h.document_id)} v{shown(vr, h.chunk_id)}"
            f" k{shown(kr, h.chunk_id)} cos {h.vector_score:.3f} | {where}"
        )
    print("  evidence chunks (chunk/passage rank; * = evidence in the chunk itself):")
    best = sorted(holding, key=lambda r: fr.get(r.id, 10**6))[:4]
    for r in best:
        where = " › ".join(r.heading_path or [])[-70:]
        cos = next((h.vector_score for h in by_vector if h.chunk_id == r.id), 0.0)
        mark = "*" if r.id in strict else " "
        print(
            f"   {mark}#{r.chunk_index} fused {fr.get(r.id, '-')} v{shown(vr, r.id)}"
            f" k{shown(kr, r.id)} cos {cos:.3f} | {where}"
        )
    ev_tsv = best[0].tsv if best else ""
    top_tsv = ""
    if hits:
        async with db.sessions() as session:
            top_tsv = (
                await session.scalar(
                    text("SELECT tsv::text FROM chunks WHERE id = :i"), {"i": hits[0].chunk_id}
                )
            ) or ""
    cells = []
    for t in terms:
        lex = re.findall(r"'((?:[^']|'')+)'", t)
        on_ev = all(f"'{x}'" in ev_tsv for x in lex)
        on_top = all(f"'{x}'" in top_tsv for x in lex)
        cells.append(f"{t}={idf.get(t, 0):.1f}{'E' if on_ev else ''}{'T' if on_top else ''}")
    print(f"  terms (idf; E on evidence chunk, T on hit 1): {' '.join(cells)}")
    text_of_page = " ".join(r.content for r in rows).lower()
    ev_text = best[0].passage.lower() if best else ""
    for ident, n in spread.items():
        low = ident.lower()
        print(
            f"  identifier {ident!r}: on {n} pages; right page {'yes' if low in text_of_page else 'no'},"
            f" evidence passage {'yes' if low in ev_text else 'no'}"
        )


async def run(ids: list[int]) -> None:
    asked = [q for q in questions() if q.split in TUNING]
    if ids:
        asked = [q for q in asked if q.id in ids]
    async with eval_database() as db:
        page_of = {name: document for document, name in db.files.items()}
        searcher = Searcher(db.sessions, db.embedder)
        for q in asked:
            if not ids:
                hits = await searcher.search(
                    q.question, top_k=TOP_K, min_score=0.0, mode="hybrid", filters=SearchFilters()
                )
                evidence = words(q.evidence)
                if any(
                    db.files.get(h.document_id) == q.file and evidence in words(h.content)
                    for h in hits[:5]
                ):
                    continue
            await explain(db, q, page_of)
    print(f"\n(RRF_K {search.RRF_K}, keyword weight {search.KEYWORD_WEIGHT}, depth {DEPTH})")


def main() -> None:
    asyncio.run(run([int(a) for a in sys.argv[1:]]))


if __name__ == "__main__":
    main()
