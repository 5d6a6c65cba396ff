"""`python -m eval.chapters embed|search [up|chain]`: would a chunk find its question better if
the page's DocBook chapter (the navheader's "Up" title: "Chapter 43. PL/pgSQL — SQL Procedural
Language", "SQL Commands") were embedded in front of its context, the shown title staying the
file name? Measured offline (issue 16, session 12).

`up`: the page's parent only; `chain`: every ancestor up to the manual's home page, outermost
first ("Part III. Server Administration > Chapter 28. Monitoring Database Activity"). `embed`
embeds every chunk's text with that prefix into the evaluation's embedding cache (the same file
as the corpus: the key is the text); `search` writes those vectors over the chunks' own inside a
transaction that is rolled back (the database a `make eval` left stays as it was) and runs the
service's hybrid and vector search on EVAL_SPLIT (default tune) before and after, printed like
eval.tune (other splits: aggregates and how many questions rose/fell only).
"""

from __future__ import annotations

import asyncio
import os
import sys
from functools import cache
from typing import Any

from bs4 import BeautifulSoup
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from amelia_rag.chunking import context_text
from amelia_rag.search import Searcher
from amelia_rag.store import vector_literal
from eval.corpus import manual_dir, questions
from eval.score import HEADER, row
from eval.tune import SPLIT, eval_database, measure

HOME = "index.html"


@cache
def up(page: str) -> tuple[str, str] | None:
    """The page's parent in the manual (file, title) from its navheader, None at the top."""
    path = manual_dir() / page
    if page == HOME or not path.is_file():
        return None
    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    link = soup.select_one("div.navheader a[accesskey=u]")
    if link is None or not link.get("href"):
        return None
    href = str(link["href"]).split("#", 1)[0]
    if href == HOME:
        return None
    return href, " ".join(str(link.get("title", "")).split())


def chapters(page: str, kind: str) -> list[str]:
    """The titles to put in front of a chunk of `page`, outermost first."""
    out: list[str] = []
    parent = up(page)
    while parent is not None:
        out.append(parent[1])
        if kind == "up":
            break
        parent = up(parent[0])
    return out[::-1]


async def chunk_texts(engine: Any, kind: str) -> list[tuple[Any, str]]:
    """Every chunk's id and its embedded text with the page's chapters in front."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.id, d.title, d.file_path, c.heading_path, c.page, c.content"
                " FROM chunks c JOIN documents d ON d.id = c.document_id ORDER BY c.id"
            )
        )
        out = []
        for r in rows:
            page = r.file_path.rsplit("/", 1)[-1]
            own = context_text(r.title, tuple(r.heading_path or ()), r.page or 0, r.content)
            prefix = " > ".join(chapters(page, kind))
            out.append((r.id, f"{prefix} > {own}" if prefix else own))
        return out


async def run(command: str, kind: str) -> None:
    async with eval_database() as db:
        chunks = await chunk_texts(db.engine, kind)
        vectors = await db.embedder.embed([t for _, t in chunks])
        print(f"{len(chunks)} chunks ({kind}); {db.embedder.computed} embedded now", flush=True)
        if command == "embed":
            return
        asked = [q for q in questions() if SPLIT in ("all", q.split)]
        print(f"{len(asked)} {SPLIT} questions\n\n{HEADER}")
        before = {}
        for mode in ("hybrid", "vector"):
            scored, before[mode] = await measure(
                db, Searcher(db.sessions, db.embedder), asked, mode
            )
            print(row(f"{mode} service", scored), scored.misses if SPLIT == "tune" else "")
        async with db.engine.connect() as conn:
            outer = await conn.begin()  # rolled back: the service's vectors stay
            await conn.execute(
                text("UPDATE chunks SET embedding = CAST(:v AS vector) WHERE id = :id"),
                [
                    {"id": cid, "v": vector_literal(v)}
                    for (cid, _), v in zip(chunks, vectors, strict=True)
                ],
            )
            sessions = async_sessionmaker(
                bind=conn, expire_on_commit=False, join_transaction_mode="create_savepoint"
            )
            try:
                for mode in ("hybrid", "vector"):
                    scored, ranks = await measure(db, Searcher(sessions, db.embedder), asked, mode)
                    moved = (
                        f"{sum(ranks[i] < before[mode][i] for i in ranks)} rose /"
                        f" {sum(ranks[i] > before[mode][i] for i in ranks)} fell"
                    )
                    shown = f"{scored.misses} {moved}" if SPLIT == "tune" else moved
                    print(row(f"{mode} chapters {kind}", scored), shown, flush=True)
            finally:
                await outer.rollback()


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    kind = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("EVAL_CHAPTERS", "up")
    if command not in ("embed", "search") or kind not in ("up", "chain"):
        raise SystemExit("usage: python -m eval.chapters embed|search [up|chain]")
    asyncio.run(run(command, kind))


if __name__ == "__main__":
    main()
