"""Session 11's run-path changes keep their rules: a worker's run lock that waits, in the same
statement, for the CreateRun still recording the run is taken once, never leaked, when that
wait times out (the wait itself: `test_agents_run_path`); a checkpoint written behind
(`checkpoints.RunSaver`) is what the next read sees, and one PostgreSQL refuses stops the
pick-up at its next step instead of being lost."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from test_agents_run_path import recording
from test_agents_run_path import store as store  # the fixture

from amelia_agents.checkpoints import RunSaver, for_pickup, open_checkpointer
from amelia_agents.store import Store
from amelia_common.settings import Settings


async def test_a_run_lock_whose_recording_wait_times_out_is_taken_once(
    store: Store, agents_settings: Settings
) -> None:
    async with recording(store, agents_settings) as (row, _commit):
        lock, other = store.run_lock(row.id), store.run_lock(row.id)
        try:
            # Still recording after 0.2 s: the lock is taken without the wait (the claim then
            # finds no run yet, and the worker's rules for that apply).
            assert await lock.acquire(recorded_within=0.2) is True
            assert lock.held
            assert await other.acquire() is False
            await lock.release()
            # Released once, free: nothing of the timed-out statement kept it.
            assert await other.acquire() is True
        finally:
            await lock.release()
            await other.release()


def _checkpoint(value: str) -> tuple[dict[str, Any], dict[str, Any]]:
    checkpoint: dict[str, Any] = dict(empty_checkpoint())
    checkpoint["channel_values"] = {"note": value}
    checkpoint["channel_versions"] = {"note": 1}
    return checkpoint, {"note": 1}


async def test_a_checkpoint_written_behind_is_read_back_and_a_refused_one_stops_the_pickup(
    agents: Any, agents_settings: Settings
) -> None:
    pool, shared = await open_checkpointer(agents_settings, max_size=2)
    config: Any = {"configurable": {"thread_id": uuid.uuid4().hex, "checkpoint_ns": ""}}
    try:
        async with for_pickup(shared) as saver:
            assert isinstance(saver, RunSaver)
            first, versions = _checkpoint("first")
            await saver.aput(config, first, {"source": "input", "step": -1}, versions)  # type: ignore[arg-type]
            # The read after it waits for the write behind: it sees the checkpoint.
            read = await saver.aget_tuple(config)
            assert read is not None and read.checkpoint["id"] == first["id"]
            assert read.checkpoint["channel_values"] == {"note": "first"}

            # PostgreSQL refuses this one (a NUL character in JSONB): `aput` has returned by
            # then; the pick-up's next write, and its drain, raise PostgreSQL's error.
            refused, versions = _checkpoint("nul \x00 here")
            await saver.aput(config, refused, {"source": "loop", "step": 0}, versions)  # type: ignore[arg-type]
            with pytest.raises(psycopg.DataError):
                await saver.drain()
            later, versions = _checkpoint("later")
            with pytest.raises(psycopg.DataError):
                await saver.aput(config, later, {"source": "loop", "step": 1}, versions)  # type: ignore[arg-type]
        async with for_pickup(shared) as saver:  # the connection went back usable
            read = await saver.aget_tuple(config)
            assert read is not None and read.checkpoint["id"] == first["id"]
    finally:
        await pool.close()
