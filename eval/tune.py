"""`python -m eval.tune`: the service's search with its ranking constants varied, on the tuning
splits only (tune and tune2; held-out and fresh are never looked at here).

Runs on the database a previous `make eval` left under AMELIA_EVAL_DIR (every page indexed) and
the embedding cache, so each setting costs only its searches. Each argument is a JSON object of
`amelia_rag.search` constants to set (`{"RRF_K": 20, "KEYWORD_WEIGHT": 0.5}`), plus `mode`
(default hybrid) and `merge` (merge_chars); with none, the service's defaults. Prints one row per
setting, with the questions whose right passage is not in the top 5.

`EVAL_SPLIT` names the splits asked, comma-separated (default `tune,tune2`; `all`: every one).
`EVAL_SPLIT=held-out` (or fresh) measures a mechanism already chosen on the tuning splits, once,
on another split: only aggregates are printed there, and how many questions' right passage rose
or fell against the first setting of the same mode — never which ones, so nothing is chosen on
them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from amelia_common.db import create_engine, session_factory
from amelia_common.embedded import EmbeddedPostgres
from amelia_common.settings import Settings
from amelia_rag import search
from amelia_rag.embeddings import LocalEmbedder, load_local_model
from amelia_rag.search import Searcher, SearchFilters
from eval.__main__ import CACHE, ROOT, TOP_K
from eval.cache import CachedEmbedder, EmbeddingCache
from eval.corpus import Question, questions
from eval.score import HEADER, Ranked, Scores, first_rank, row, score

SPLIT = os.environ.get("EVAL_SPLIT", "tune,tune2")
# The splits a change is chosen on: only their misses are printed question by question.
TUNING = ("tune", "tune2")


def asked_questions() -> list[Question]:
    """The questions of the splits EVAL_SPLIT names."""
    chosen = SPLIT.split(",")
    return [q for q in questions() if "all" in chosen or q.split in chosen]


def tuning_only() -> bool:
    """Whether only tuning splits are asked (then misses may be shown by question)."""
    return set(SPLIT.split(",")) <= set(TUNING)


@dataclass
class EvalDatabase:
    """What a `make eval` left: its database, the cached embedder, document id → page file."""

    settings: Settings
    engine: AsyncEngine
    embedder: CachedEmbedder
    files: dict[Any, str]

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return session_factory(self.engine)


@asynccontextmanager
async def eval_database() -> AsyncIterator[EvalDatabase]:
    """The evaluation's PostgreSQL (started here unless `make eval` runs), for reruns of search."""
    postgres = EmbeddedPostgres(ROOT)
    try:
        settings = Settings(_env_file=None, DATABASE_URL=postgres.start(), LOG_LEVEL="WARNING")
        model = await asyncio.to_thread(load_local_model)
        local = LocalEmbedder.from_model(model, settings)
        embedder = CachedEmbedder(local, EmbeddingCache(CACHE, local.signature))
        engine = create_engine(settings)
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT id, file_path FROM documents"))
            files = {r[0]: r[1].rsplit("/", 1)[-1] for r in rows}
        try:
            yield EvalDatabase(settings, engine, embedder, files)
        finally:
            await engine.dispose()
    finally:
        postgres.stop_if_started_here()  # a running `make eval` keeps its server


async def measure(
    db: EvalDatabase, searcher: Searcher, asked: list[Question], mode: str
) -> tuple[Scores, dict[int, int]]:
    """The questions asked through `searcher` at the defaults (top TOP_K, no threshold): the
    scores, and each question's rank of its right passage (99: not in the top TOP_K)."""
    results = {}
    for q in asked:
        hits = await searcher.search(
            q.question, top_k=TOP_K, min_score=0.0, mode=mode, filters=SearchFilters()
        )
        results[q.id] = [Ranked(db.files.get(h.document_id, "?"), h.content) for h in hits]
    ranks = {q.id: first_rank(results[q.id], q, passage=True) or 99 for q in asked}
    return score(results, asked), ranks


async def tune(settings_to_try: list[dict[str, Any]]) -> None:
    async with eval_database() as db:
        asked = asked_questions()
        defaults = {k: getattr(search, k) for s in settings_to_try for k in s if k.isupper()}
        print(f"{len(db.files)} pages, {len(asked)} {SPLIT} questions, top {TOP_K}\n\n{HEADER}")
        first: dict[str, dict[int, int]] = {}
        for setting in settings_to_try:
            chosen = dict(setting)
            mode = chosen.pop("mode", "hybrid")
            merge = chosen.pop("merge", search.MERGE_CHUNKS * db.settings.CHUNK_SIZE)
            for key, value in {**defaults, **chosen}.items():
                setattr(search, key, value)
            searcher = Searcher(db.sessions, db.embedder, merge_chars=merge)
            scored, ranks = await measure(db, searcher, asked, mode)
            before = first.setdefault(mode, ranks)
            print(row(f"{mode} {json.dumps(setting)}", scored), moved(scored, ranks, before))


def moved(scored: Scores, ranks: dict[int, int], before: dict[int, int]) -> str:
    """How many questions' right passage rose or fell against `before` (and, on the tuning
    splits only, which questions miss the top 5)."""
    counts = (
        f"{sum(ranks[i] < before[i] for i in ranks)} rose /"
        f" {sum(ranks[i] > before[i] for i in ranks)} fell"
    )
    return f"{scored.misses} {counts}" if tuning_only() else counts


async def compare(
    db: EvalDatabase, settings: list[dict[str, Any]], searcher: Callable[[dict[str, Any]], Searcher]
) -> None:
    """The asked questions through `searcher(setting)` in hybrid mode, one row per setting,
    rises and falls counted against the first."""
    asked = asked_questions()
    print(f"{len(db.files)} pages, {len(asked)} {SPLIT} questions, top {TOP_K}\n\n{HEADER}")
    first: dict[int, int] | None = None
    for setting in settings:
        scored, ranks = await measure(db, searcher(setting), asked, "hybrid")
        first = first or ranks
        print(row(f"hybrid {json.dumps(setting)}", scored), moved(scored, ranks, first), flush=True)


def main() -> None:
    asyncio.run(tune([json.loads(arg) for arg in sys.argv[1:]] or [{}]))


if __name__ == "__main__":
    main()
