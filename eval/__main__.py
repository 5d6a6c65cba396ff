"""`make eval` / `python -m eval`: the rag service against plain pipelines, same run, same pages.

Starts an embedded PostgreSQL and nats-server under AMELIA_EVAL_DIR (default /tmp/amelia-eval,
kept between runs so unchanged pages are not indexed again), runs the rag service in this
process with its default settings, ingests the corpus (see corpus.py) through gRPC, waits until
every page is indexed, asks every question in each search mode (top 10, no threshold or mode
option beyond the defaults a user gets), and scores the passages next to the baselines of
baselines.py built from the same pages. Embeddings are cached on disk (cache.py), so only the
first run pays for the model. Prints one table per question split (all, tune, held-out, fresh). Refuses to start
when a question's evidence is not in its page's section (corpus.check).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from amelia.v1 import rag_pb2, rag_pb2_grpc
from amelia_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from amelia_common.logging import configure_logging
from amelia_common.settings import Settings
from amelia_rag.embeddings import LocalEmbedder, load_local_model
from amelia_rag.server import build_service
from eval import baselines
from eval.cache import CachedEmbedder, EmbeddingCache
from eval.corpus import SPLITS, Question, check, manual_dir, pages, questions
from eval.score import HEADER, Ranked, Scores, row, score

ROOT = Path(os.environ.get("AMELIA_EVAL_DIR", "/tmp/amelia-eval"))
CACHE = Path(
    os.environ.get("AMELIA_EVAL_CACHE", Path.home() / ".cache/amelia/eval-embeddings.sqlite")
)
TOP_K = 10
IN_FLIGHT = 4
MODES = {
    "hybrid": rag_pb2.SEARCH_MODE_HYBRID,
    "vector": rag_pb2.SEARCH_MODE_VECTOR,
    "keyword": rag_pb2.SEARCH_MODE_KEYWORD,
}
Results = dict[int, list[Ranked]]


async def ingest(stub: rag_pb2_grpc.RagServiceStub, files: list[Path]) -> dict[str, str]:
    """Every page through IngestDocument; document name → page file name."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    names: dict[str, str] = {}

    async def one(path: Path) -> None:
        async with gate:
            reply = await stub.IngestDocument(
                rag_pb2.IngestDocumentRequest(
                    source=rag_pb2.DocumentSource(file_path=f"/postgresql-doc/{path.name}"),
                    content=await asyncio.to_thread(path.read_bytes),
                ),
                timeout=3600,
            )
        names[reply.document.name] = path.name

    await asyncio.gather(*(one(p) for p in files))
    return names


async def wait_indexed(settings: Settings, names: dict[str, str]) -> None:
    """Until no page is still being indexed (the service indexes in the background)."""
    import asyncpg

    from amelia_common.db import libpq_url

    conn = await asyncpg.connect(libpq_url(settings.DATABASE_URL))
    try:
        has_state = await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = 'documents' AND column_name = 'state'"
        )
        if not has_state:
            return
        while True:
            rows = await conn.fetch("SELECT state, count(*) AS n FROM documents GROUP BY state")
            states = {r["state"]: r["n"] for r in rows}
            if not states.get("indexing"):
                failed = states.get("failed", 0)
                if failed:
                    print(f"warning: {failed} pages failed to index", file=sys.stderr)
                return
            print(f"  indexing: {states}", file=sys.stderr, flush=True)
            await asyncio.sleep(10)
    finally:
        await conn.close()


async def service_results(
    stub: rag_pb2_grpc.RagServiceStub, asked: list[Question], names: dict[str, str]
) -> dict[str, Results]:
    out: dict[str, Results] = {}
    for label, mode in MODES.items():
        results: Results = {}
        seconds: list[float] = []
        for q in asked:
            started = time.perf_counter()
            reply = await stub.Search(
                rag_pb2.SearchRequest(query=q.question, top_k=TOP_K, mode=mode), timeout=120
            )
            seconds.append(time.perf_counter() - started)
            results[q.id] = [Ranked(names.get(h.document, "?"), h.content) for h in reply.hits]
        out[f"amelia {label}"] = results
        print(
            f"  search {label}: p50 {np.median(seconds) * 1000:.0f} ms,"
            f" max {max(seconds) * 1000:.0f} ms (gRPC, query embedding included)",
            file=sys.stderr,
            flush=True,
        )
    return out


async def baseline_results(
    embedder: CachedEmbedder, files: list[Path], asked: list[Question]
) -> dict[str, Results]:
    chunks = [
        Ranked(path.name, text)
        for path in files
        for text in baselines.split(baselines.html_to_text(path.read_text(encoding="utf-8")))
    ]
    print(f"  baseline: {len(chunks)} chunks of 800/200", file=sys.stderr, flush=True)
    matrix = await embedder.embed([c.content for c in chunks])
    bm25 = baselines.BM25([baselines.tokens(c.content) for c in chunks])
    dense: Results = {}
    keyword: Results = {}
    fused: Results = {}
    for q in asked:
        query = await embedder.embed_query(q.question)
        by_dense = baselines.top(matrix @ query, TOP_K * 5)
        by_bm25 = baselines.top(bm25.scores(baselines.tokens(q.question)), TOP_K * 5)
        for results, ranking in (
            (dense, by_dense[:TOP_K]),
            (keyword, by_bm25[:TOP_K]),
            (fused, baselines.rrf([by_dense, by_bm25], TOP_K)),
        ):
            results[q.id] = [chunks[i] for i in ranking]
    return {"plain dense": dense, "plain BM25": keyword, "plain dense + BM25 (RRF)": fused}


def report(all_results: dict[str, Results], asked: list[Question]) -> None:
    for split in ("all", *SPLITS):
        subset = [q for q in asked if split == "all" or q.split == split]
        print(f"\n{split} questions ({len(subset)}), top {TOP_K}\n")
        print(HEADER)
        scored: dict[str, Scores] = {}
        for label, results in all_results.items():
            scored[label] = score(results, subset)
            print(row(label, scored[label]))
    print("\nquestions without the right passage in the top 5:")
    for label, results in all_results.items():
        print(f"  {label}: {score(results, asked).misses}")


async def run(root: Path, asked: list[Question], files: list[Path]) -> None:
    postgres = EmbeddedPostgres(ROOT)
    nats = EmbeddedNats(ROOT, free_port())
    service = None
    try:
        settings = Settings(
            _env_file=None,
            DATABASE_URL=postgres.start(),
            NATS_URL=nats.start(),
            AMELIA_DATA_DIR=ROOT / "data",
            RAG_GRPC_PORT=0,
            LOG_LEVEL="WARNING",
        )
        configure_logging(settings, "eval")
        model = await asyncio.to_thread(load_local_model)
        local = LocalEmbedder.from_model(model, settings)
        embedder = CachedEmbedder(local, EmbeddingCache(CACHE, local.signature))
        service = await build_service(settings, embedder=embedder)
        port = await service.start()
        print(
            f"corpus: {len(files)} pages of {root} ({sum(p.stat().st_size for p in files):,}"
            f" bytes of HTML), {len(asked)} questions",
            file=sys.stderr,
            flush=True,
        )
        started = time.perf_counter()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rag_pb2_grpc.RagServiceStub(channel)
            names = await ingest(stub, files)
            await wait_indexed(settings, names)
            print(
                f"  service: indexed in {time.perf_counter() - started:.0f}s"
                f" ({embedder.computed} texts embedded, the rest from the cache)",
                file=sys.stderr,
                flush=True,
            )
            results = await service_results(stub, asked, names)
        results.update(await baseline_results(embedder, files, asked))
        report(results, asked)
        print(f"\n(embedded {embedder.computed} texts this run; cache {CACHE})")
    finally:
        if service is not None:
            await service.stop(1.0)
        nats.stop()
        postgres.stop()


def main() -> None:
    np.set_printoptions(precision=3)
    root = manual_dir()
    asked = questions()
    check(root, asked)
    ROOT.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(root, asked, pages(root, asked)))


if __name__ == "__main__":
    main()
