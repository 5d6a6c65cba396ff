"""`python -m eval.windows embed | search [setting …]`: multi-vector passages, measured offline.

Would matching a question against small windows of each chunk (a few sentences with the title and
heading path in front) find right passages the chunk vectors miss? Session 10 found that the
misses are not among the hybrid search's first 20 passages, so re-ranking cannot reach them: this
changes candidate generation instead. Runs on the database and embedding cache a `make eval` left
(like eval.tune); the window vectors are cached in their own file next to the corpus cache.

- `embed`: cuts every stored chunk into windows of whole sentences up to `WINDOW_CHARS`, embeds
  them (the first time only), and times `model.encode` on a sample of chunks both ways — the
  chunk's own text against its windows — which is what storing windows would cost an ingest.
- `search`: the service's vector and keyword rankings (its own queries) and a window ranking
  (a chunk's score is the best cosine of its windows, exact over all of them in numpy), fused by
  weighted reciprocal rank fusion and passed through the service's `distinct` and
  `reading_order`. Each setting is a JSON object: `{"window": 1.0, "vector": 1.0, "keyword":
  0.7, "k": 10}` (leg weights, RRF constant; 0 drops a leg). The tune split unless EVAL_SPLIT
  says otherwise, printed like eval.tune (other splits: aggregates and how many rose/fell only).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import text

from amelia_common.db import session_factory
from amelia_rag import search
from amelia_rag.chunking import context_text
from amelia_rag.search import Hit
from eval.__main__ import CACHE, TOP_K
from eval.cache import CachedEmbedder, EmbeddingCache
from eval.corpus import questions
from eval.score import HEADER, Ranked, first_rank, row, score
from eval.tune import eval_database

SPLIT = os.environ.get("EVAL_SPLIT", "tune")
WINDOW_CHARS = int(os.environ.get("EVAL_WINDOW_CHARS", "240"))
WINDOW_CACHE = CACHE.with_name("eval-windows.sqlite")
SAMPLE = 200
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n+")


@dataclass
class StoredChunk:
    row: Any

    def hit(self) -> Hit:
        """A fresh Hit for this chunk (fusion and merging change hits in place)."""
        r = self.row
        return Hit(
            chunk_id=r.id,
            content=r.passage or r.content,
            score=0.0,
            document_id=r.document_id,
            document_title=r.title,
            document_type=r.type,
            chunk_index=r.chunk_index,
            start_offset=r.passage_start if r.passage is not None else r.start_offset,
            end_offset=r.passage_end if r.passage is not None else r.end_offset,
            heading_path=list(r.heading_path or []),
            page=r.page,
            section=r.section,
        )


def windows(content: str) -> list[str]:
    """The chunk's text as runs of whole sentences of at most WINDOW_CHARS (a longer sentence
    is a window of its own)."""
    out: list[str] = []
    current = ""
    for sentence in (s.strip() for s in _SENTENCE_END.split(content)):
        if not sentence:
            continue
        if current and len(current) + 1 + len(sentence) > WINDOW_CHARS:
            out.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        out.append(current)
    return out or [content]


def window_texts(chunk: Any) -> list[str]:
    return [
        context_text(chunk.title, tuple(chunk.heading_path or ()), chunk.page, w)
        for w in windows(chunk.content)
    ]


async def load_chunks(db: Any) -> list[Any]:
    async with db.engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT c.id, c.document_id, d.title, d.type, c.chunk_index, c.content,"
                " c.start_offset, c.end_offset, c.heading_path, c.page, c.section, c.passage,"
                " c.passage_start, c.passage_end FROM chunks c JOIN documents d"
                " ON d.id = c.document_id ORDER BY c.document_id, c.chunk_index"
            )
        )
        return list(result.all())


async def embed_windows(db: Any, chunks: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Every window's vector, and the chunk (position in `chunks`) each belongs to."""
    cached = CachedEmbedder(db.embedder.inner, EmbeddingCache(WINDOW_CACHE, db.embedder.signature))
    texts: list[str] = []
    owner: list[int] = []
    for i, chunk in enumerate(chunks):
        for t in window_texts(chunk):
            texts.append(t)
            owner.append(i)
    started = time.perf_counter()
    vectors = await cached.embed(texts)
    print(
        f"{len(chunks)} chunks, {len(texts)} windows of ≤ {WINDOW_CHARS} characters"
        f" ({len(texts) / len(chunks):.2f} a chunk); {cached.computed} embedded in"
        f" {time.perf_counter() - started:.0f} s, the rest from {WINDOW_CACHE}",
        file=sys.stderr,
        flush=True,
    )
    return vectors, np.asarray(owner)


def encode_cost(db: Any, chunks: list[Any]) -> None:
    """Raw `model.encode` seconds for a sample of chunks, their texts and their windows,
    alternated twice so that a change of machine load hits both."""
    model = db.embedder.inner.model
    rng = np.random.default_rng(11)
    sample = [chunks[i] for i in rng.choice(len(chunks), SAMPLE, replace=False)]
    whole = [context_text(c.title, tuple(c.heading_path or ()), c.page, c.content) for c in sample]
    parts = [t for c in sample for t in window_texts(c)]
    seconds: dict[str, float] = {"chunks": 0.0, "windows": 0.0}
    for _ in range(2):
        for label, texts in (("chunks", whole), ("windows", parts)):
            started = time.process_time()
            model.encode(texts, batch_size=16, normalize_embeddings=True, show_progress_bar=False)
            seconds[label] += time.process_time() - started
    print(
        f"encode CPU seconds, {SAMPLE} chunks twice: chunk texts {seconds['chunks']:.1f},"
        f" their {len(parts)} windows {seconds['windows']:.1f}"
        f" (windows / chunks {seconds['windows'] / seconds['chunks']:.2f})",
        flush=True,
    )


def fused(legs: list[tuple[list[Hit], float]], k: float) -> list[Hit]:
    """Weighted RRF over any number of rankings, ties by similarity then position (as the
    service's fuse)."""
    scores: dict[uuid.UUID, float] = {}
    hits: dict[uuid.UUID, Hit] = {}
    for ranking, weight in legs:
        if not weight:
            continue
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight / (k + rank)
            hits.setdefault(hit.chunk_id, hit)
    best = sum(w for _, w in legs) / (k + 1)
    out = []
    for cid in sorted(scores, key=lambda c: (-scores[c], -hits[c].vector_score, hits[c].order)):
        hits[cid].score = scores[cid] / best
        out.append(hits[cid])
    return out


async def run_search(settings: list[dict[str, float]]) -> None:
    async with eval_database() as db:
        chunks = await load_chunks(db)
        vectors, owner = await embed_windows(db, chunks)
        stored = [StoredChunk(c) for c in chunks]
        asked = [q for q in questions() if SPLIT in ("all", q.split)]
        n = max(TOP_K * search.CANDIDATES_PER_HIT, search.CANDIDATES)
        merge = search.MERGE_CHUNKS * db.settings.CHUNK_SIZE
        legs: dict[int, tuple[list[Hit], list[Hit], np.ndarray]] = {}
        sessions = session_factory(db.engine)
        for q in asked:
            query = await db.embedder.embed_query(q.question)
            async with sessions() as session, session.begin():
                by_vector = await search.vector_ranking(session, query, n, None)
                by_keyword = await search.keyword_ranking(session, q.question, query, n, None)
            best = np.full(len(chunks), -1.0, dtype=np.float32)
            np.maximum.at(best, owner, vectors @ query)
            legs[q.id] = (by_vector, by_keyword, best)
        print(f"{len(asked)} {SPLIT} questions, top {TOP_K}\n\n{HEADER}")
        first: dict[int, int] | None = None
        for setting in settings:
            results: dict[int, list[Ranked]] = {}
            for q in asked:
                by_vector, by_keyword, best = legs[q.id]
                order = np.argsort(-best, kind="stable")[:n]
                by_window = []
                for i in order:
                    hit = stored[i].hit()
                    hit.vector_score = float(best[i])
                    by_window.append(hit)
                copies = [
                    [Hit(**{**h.__dict__, "heading_path": list(h.heading_path)}) for h in ranking]
                    for ranking in (by_vector, by_keyword)
                ]
                ranked = fused(
                    [
                        (copies[0], setting.get("vector", search.VECTOR_WEIGHT)),
                        (copies[1], setting.get("keyword", search.KEYWORD_WEIGHT)),
                        (by_window, setting.get("window", 0.0)),
                    ],
                    setting.get("k", search.RRF_K),
                )
                hits = search.reading_order(
                    search.distinct(ranked, TOP_K, merge, search.PER_DOCUMENT)
                )
                results[q.id] = [Ranked(db.files.get(h.document_id, "?"), h.content) for h in hits]
            scored = score(results, asked)
            ranks = {q.id: first_rank(results[q.id], q, passage=True) or 99 for q in asked}
            first = first or ranks
            moved = (
                f"{sum(ranks[i] < first[i] for i in ranks)} rose /"
                f" {sum(ranks[i] > first[i] for i in ranks)} fell"
            )
            shown = scored.misses if SPLIT == "tune" else moved
            print(row(json.dumps(setting), scored), shown, flush=True)


async def run_embed() -> None:
    async with eval_database() as db:
        chunks = await load_chunks(db)
        await embed_windows(db, chunks)
        encode_cost(db, chunks)


def main() -> None:
    if sys.argv[1:2] == ["embed"]:
        asyncio.run(run_embed())
    else:
        asyncio.run(run_search([json.loads(a) for a in sys.argv[2:]] or [{}]))


if __name__ == "__main__":
    main()
