"""Replicas starting together on a fresh database each set up LangGraph's checkpoint tables:
all of them must come up (the setup's CREATE INDEX CONCURRENTLY once waited for the snapshot of
a replica blocked on the setup lock, and both hung)."""

from __future__ import annotations

import asyncio
from typing import Any

from amelia_agents.checkpoints import open_checkpointer

# Far beyond a setup's few seconds on a busy machine; only a hang reaches it.
HANG_SECONDS = 180


async def test_replicas_setting_up_checkpoints_together_all_start(infra: Any) -> None:
    async with infra.scratch_database("checkpoints") as url:
        settings = infra.settings(DATABASE_URL=url)
        opened = await asyncio.wait_for(
            asyncio.gather(*(open_checkpointer(settings, max_size=2) for _ in range(3))),
            HANG_SECONDS,
        )
        try:
            for _pool, saver in opened:
                config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
                assert await saver.aget_tuple(config) is None  # tables there and usable
        finally:
            for pool, _saver in opened:
                await pool.close()
