"""Embeddings of the evaluation corpus kept on disk between runs (model + text hash → vector).

Embedding the corpus takes minutes on a busy CPU; tuning re-runs the evaluation many times over
mostly the same texts. The cache wraps any `Embedder`, so the service under evaluation runs its
real ingest and search code and only the model call is skipped for texts seen before.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from amelia_rag.embeddings import Embedder, Progress


class EmbeddingCache:
    """A SQLite file of float32 vectors keyed by (model signature, sha256 of the text)."""

    def __init__(self, path: Path, signature: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (model TEXT, hash TEXT, vector BLOB,"
            " PRIMARY KEY (model, hash))"
        )
        self.signature = signature

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        keys = list({self.key(t) for t in texts})
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            rows = self.db.execute(
                f"SELECT hash, vector FROM vectors WHERE model = ? AND hash IN"
                f" ({','.join('?' * len(part))})",
                [self.signature, *part],
            )
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
            [
                (self.signature, self.key(t), np.asarray(v, dtype=np.float32).tobytes())
                for t, v in zip(texts, vectors, strict=True)
            ],
        )
        self.db.commit()


class CachedEmbedder:
    """An `Embedder` that asks the wrapped one only for texts the cache does not hold."""

    def __init__(self, inner: Embedder, cache: EmbeddingCache) -> None:
        self.inner = inner
        self.cache = cache
        self.computed = 0
        self.dimension = inner.dimension
        self.signature = inner.signature

    async def embed(self, texts: Sequence[str], on_progress: Progress | None = None) -> np.ndarray:
        known = self.cache.get(texts)
        missing = [t for t in dict.fromkeys(texts) if self.cache.key(t) not in known]
        if missing:
            vectors = await self.inner.embed(missing, on_progress)
            self.cache.put(missing, vectors)
            self.computed += len(missing)
            known.update((self.cache.key(t), v) for t, v in zip(missing, vectors, strict=True))
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = known[self.cache.key(t)]
        return out

    async def embed_query(self, text: str) -> np.ndarray:
        return (await self.embed([text]))[0]

    async def aclose(self) -> None:
        await self.inner.aclose()
