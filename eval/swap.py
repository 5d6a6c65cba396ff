"""Another model's vectors in place of MiniLM's for the length of some searches: the `chunks`
table's `embedding` column is rewritten inside a transaction that is rolled back at the end, so
`make eval`'s database is left as it was (eval.e5, eval.mpnet)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


@asynccontextmanager
async def swapped_embeddings(
    engine: AsyncEngine, ids: Sequence[Any], vectors: np.ndarray, dimension: int = 384
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions that see `vectors` as the embeddings of the chunks `ids`. Another dimension
    than the column's replaces the column (and its HNSW index: the vector leg scans exactly).
    Searches on other connections wait until the end: the table is locked."""
    async with engine.connect() as conn:
        outer = await conn.begin()
        try:
            if dimension != 384:
                await conn.execute(text("ALTER TABLE chunks DROP COLUMN embedding"))
                await conn.execute(
                    text(f"ALTER TABLE chunks ADD COLUMN embedding vector({int(dimension)})")
                )
            await conn.execute(
                text("UPDATE chunks SET embedding = CAST(:v AS vector) WHERE id = :id"),
                [
                    {"id": cid, "v": "[" + ",".join(f"{x:.7f}" for x in v) + "]"}
                    for cid, v in zip(ids, vectors, strict=True)
                ],
            )
            yield async_sessionmaker(
                bind=conn, expire_on_commit=False, join_transaction_mode="create_savepoint"
            )
        finally:
            await outer.rollback()
