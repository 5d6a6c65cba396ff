"""Search: pgvector cosine ranking, PostgreSQL full-text ranking, and their fusion.

- vector: HNSW index scan ordered by cosine distance. Filters (documents, types, metadata) are
  resolved to document ids first and applied inside the scan; pgvector 0.8's iterative scan
  (`hnsw.iterative_scan = relaxed_order`) keeps scanning until `top_k` rows pass the filter,
  and an exact scan of the filtered rows backs it up when even that comes up short. Hits below
  `min_score` (cosine similarity) are dropped.
- keyword: `ts_rank_cd` over the chunk's tsvector (headings weighted above body text); a chunk
  matches when it holds at least half of the query's distinct terms. `min_score` does not apply
  (it is a similarity threshold).
- hybrid: reciprocal rank fusion (k = 60) of both rankings. A chunk can enter through the
  vector ranking only with similarity ≥ `min_score`, or through the keyword ranking regardless;
  either way both of its ranks count. The score is scaled so that first in both rankings = 1.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from amelia_rag.embeddings import Embedder
from amelia_rag.store import vector_literal

RRF_K = 60
# How many candidates each ranking contributes to fusion, at least.
FUSION_CANDIDATES = 50
EF_SEARCH = 100
MAX_SCAN_TUPLES = 20_000
MAX_QUERY_WORDS = 64
_QUERY_WORD = re.compile(r"\w+")


@dataclass
class SearchFilters:
    document_ids: list[uuid.UUID] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.document_ids or self.types or self.metadata)


@dataclass
class Hit:
    """One passage with where it comes from, ready to cite."""

    chunk_id: uuid.UUID
    content: str
    score: float
    document_id: uuid.UUID
    document_title: str
    document_type: str
    chunk_index: int
    start_offset: int
    end_offset: int
    heading_path: list[str]
    page: int
    vector_score: float = 0.0


_HIT_COLUMNS = """
    c.id AS chunk_id, c.content, c.document_id, d.title AS document_title,
    d.type AS document_type, c.chunk_index, c.start_offset, c.end_offset, c.heading_path, c.page
"""


class Searcher:
    """Runs searches against the chunks table."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], embedder: Embedder) -> None:
        self.sessions = sessions
        self.embedder = embedder

    async def search(
        self,
        query: str,
        *,
        top_k: int,
        min_score: float,
        mode: str,
        filters: SearchFilters,
    ) -> list[Hit]:
        vector = None if mode == "keyword" else await self.embedder.embed_query(query)
        async with self.sessions() as session, session.begin():
            document_ids: list[uuid.UUID] | None = None
            if filters:
                document_ids = await _matching_documents(session, filters)
                if not document_ids:
                    return []
            if mode == "vector":
                assert vector is not None
                hits = await vector_ranking(session, vector, top_k, document_ids)
                return [h for h in hits if h.score >= min_score]
            if mode == "keyword":
                return await keyword_ranking(session, query, None, top_k, document_ids)
            assert vector is not None
            n = max(top_k * 4, FUSION_CANDIDATES)
            by_vector = await vector_ranking(session, vector, n, document_ids)
            by_keyword = await keyword_ranking(session, query, vector, n, document_ids)
        return fuse(by_vector, by_keyword, top_k, min_score)

    async def vector_search(
        self, vector: np.ndarray, top_k: int, filters: SearchFilters | None = None
    ) -> list[Hit]:
        """Nearest chunks to an embedding (no threshold): what vector mode ranks by."""
        async with self.sessions() as session, session.begin():
            document_ids = None
            if filters:
                document_ids = await _matching_documents(session, filters)
                if not document_ids:
                    return []
            return await vector_ranking(session, vector, top_k, document_ids)


def fuse(by_vector: list[Hit], by_keyword: list[Hit], top_k: int, min_score: float) -> list[Hit]:
    """Reciprocal rank fusion; see the module docstring for who gets in."""
    scores: dict[uuid.UUID, float] = {}
    hits: dict[uuid.UUID, Hit] = {}
    admitted: set[uuid.UUID] = set()
    for rank, hit in enumerate(by_vector, start=1):
        scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank)
        hits[hit.chunk_id] = hit
        if hit.vector_score >= min_score:
            admitted.add(hit.chunk_id)
    for rank, hit in enumerate(by_keyword, start=1):
        scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank)
        hits.setdefault(hit.chunk_id, hit)
        admitted.add(hit.chunk_id)
    best = 2.0 / (RRF_K + 1)
    ranked = sorted(admitted, key=lambda cid: (-scores[cid], -hits[cid].vector_score, str(cid)))[
        :top_k
    ]
    out = []
    for cid in ranked:
        hit = hits[cid]
        hit.score = scores[cid] / best
        out.append(hit)
    return out


async def _matching_documents(session: AsyncSession, filters: SearchFilters) -> list[uuid.UUID]:
    clauses = ["TRUE"]
    params: dict[str, Any] = {}
    if filters.document_ids:
        clauses.append("id = ANY(:ids)")
        params["ids"] = filters.document_ids
    if filters.types:
        clauses.append("type = ANY(:types)")
        params["types"] = filters.types
    for i, (key, value) in enumerate(sorted(filters.metadata.items())):
        clauses.append(f"metadata ->> :mk{i} = :mv{i}")
        params[f"mk{i}"] = key
        params[f"mv{i}"] = value
    result = await session.execute(
        text(f"SELECT id FROM documents WHERE {' AND '.join(clauses)}"), params
    )
    return [row[0] for row in result]


def _hit(row: Any, score: float, vector_score: float) -> Hit:
    return Hit(
        chunk_id=row.chunk_id,
        content=row.content,
        score=score,
        document_id=row.document_id,
        document_title=row.document_title,
        document_type=row.document_type,
        chunk_index=row.chunk_index,
        start_offset=row.start_offset,
        end_offset=row.end_offset,
        heading_path=list(row.heading_path or []),
        page=row.page,
        vector_score=vector_score,
    )


async def vector_ranking(
    session: AsyncSession,
    vector: np.ndarray,
    limit: int,
    document_ids: Sequence[uuid.UUID] | None,
    *,
    exact: bool = False,
) -> list[Hit]:
    """The `limit` chunks nearest to `vector` (cosine), best first.

    Approximate (HNSW with iterative scan) unless `exact`; a filtered approximate scan that
    finds fewer than `limit` rows is redone exactly over the filtered rows.
    """
    where = "WHERE c.document_id = ANY(:ids)" if document_ids is not None else ""
    # `+ 0` keeps the planner off the HNSW index: an exact scan.
    order = (
        "(c.embedding <=> CAST(:q AS vector)) + 0"
        if exact
        else "c.embedding <=> CAST(:q AS vector)"
    )
    params: dict[str, Any] = {"q": vector_literal(vector), "n": limit}
    if document_ids is not None:
        params["ids"] = list(document_ids)
    if not exact:
        await session.execute(
            text(
                "SELECT set_config('hnsw.ef_search', :ef, true),"
                " set_config('hnsw.iterative_scan', 'relaxed_order', true),"
                " set_config('hnsw.max_scan_tuples', :mst, true)"
            ),
            {"ef": str(min(max(EF_SEARCH, limit), 1000)), "mst": str(MAX_SCAN_TUPLES)},
        )
    result = await session.execute(
        text(
            f"""
            WITH nearest AS MATERIALIZED (
                SELECT c.id, c.embedding <=> CAST(:q AS vector) AS distance
                FROM chunks c {where}
                ORDER BY {order}
                LIMIT :n
            )
            SELECT {_HIT_COLUMNS}, n.distance
            FROM nearest n
            JOIN chunks c ON c.id = n.id
            JOIN documents d ON d.id = c.document_id
            ORDER BY n.distance, c.id
            """
        ),
        params,
    )
    rows = result.all()
    if not exact and document_ids is not None and len(rows) < limit:
        return await vector_ranking(session, vector, limit, document_ids, exact=True)
    return [_hit(row, 1.0 - row.distance, 1.0 - row.distance) for row in rows]


async def query_terms(session: AsyncSession, query: str) -> list[str]:
    """The query's distinct search terms as tsquery text (stemmed; stop words dropped)."""
    words = _QUERY_WORD.findall(query)[:MAX_QUERY_WORDS]
    if not words:
        return []
    result = await session.execute(
        text(
            "SELECT DISTINCT querytree(plainto_tsquery('english', w)) "
            "FROM unnest(CAST(:words AS text[])) AS w "
            "WHERE numnode(plainto_tsquery('english', w)) > 0"
        ),
        {"words": words},
    )
    return sorted(t for t in result.scalars() if t)


async def keyword_ranking(
    session: AsyncSession,
    query: str,
    vector: np.ndarray | None,
    limit: int,
    document_ids: Sequence[uuid.UUID] | None,
) -> list[Hit]:
    """The `limit` best full-text matches, best first (with their similarity when `vector`).

    A chunk matches when it contains at least half of the query's distinct terms (rounded up),
    so a natural-language question finds passages without needing every word, and a passage
    sharing one common word with a long question does not.
    """
    terms = await query_terms(session, query)
    if not terms:
        return []
    params: dict[str, Any] = {f"t{i}": t for i, t in enumerate(terms)}
    params["any"] = " | ".join(f"({t})" for t in terms)
    params["need"] = math.ceil(len(terms) / 2)
    params["n"] = limit
    matched = " + ".join(f"(c.tsv @@ CAST(:t{i} AS tsquery))::int" for i in range(len(terms)))
    where = ""
    if document_ids is not None:
        where = "AND c.document_id = ANY(:ids)"
        params["ids"] = list(document_ids)
    similarity = "0.0"
    if vector is not None:
        similarity = "1 - (c.embedding <=> CAST(:q AS vector))"
        params["q"] = vector_literal(vector)
    result = await session.execute(
        text(
            f"""
            SELECT {_HIT_COLUMNS},
                   ts_rank_cd(c.tsv, CAST(:any AS tsquery), 1 | 32) AS rank,
                   {similarity} AS similarity
            FROM chunks c
            JOIN documents d ON d.id = c.document_id
            WHERE c.tsv @@ CAST(:any AS tsquery) {where}
              AND {matched} >= :need
            ORDER BY rank DESC, c.id
            LIMIT :n
            """
        ),
        params,
    )
    return [_hit(row, float(row.rank), float(row.similarity)) for row in result.all()]
