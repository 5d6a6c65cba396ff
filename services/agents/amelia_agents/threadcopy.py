"""CopyThread (LangGraph Server's `POST /threads/{thread_id}/copy`): a new thread with the
source's metadata and its whole checkpoint history — LangGraph's tables (`checkpoints`,
`checkpoint_blobs`, `checkpoint_writes`, from `langgraph-checkpoint-postgres`) copied under the
new thread id — and none of its runs, as LangGraph copies a thread.

One REPEATABLE READ transaction: the thread row and the three tables are read in one snapshot,
so a copy made while a run of the source writes checkpoints holds the checkpoints committed at
one instant with their blobs and writes, never a checkpoint without its blobs; and a copy is
whole or absent. A checkpoint's metadata keeps naming the run of the source that wrote it
(`amelia_run`, read by ListRunSteps and a rollback, which look at that run's own thread only);
a `thread_id` in it is set to the copy's, as LangGraph Server does."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from amelia_agents.models import ThreadRow
from amelia_agents.store import Store, now

_COPY_THREAD = text(
    """
    INSERT INTO threads (id, metadata, create_time, update_time)
    SELECT :new, metadata, :now, :now FROM threads WHERE id = :old
    RETURNING metadata
    """
)
_COPY_CHECKPOINTS = text(
    """
    INSERT INTO checkpoints
        (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
    SELECT CAST(:new AS text), checkpoint_ns, checkpoint_id, parent_checkpoint_id, type,
        checkpoint,
        CASE WHEN metadata ? 'thread_id'
            THEN jsonb_set(metadata, '{thread_id}', to_jsonb(CAST(:new AS text)))
            ELSE metadata END
    FROM checkpoints WHERE thread_id = :old
    """
)
_COPY_BLOBS = text(
    """
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT CAST(:new AS text), checkpoint_ns, channel, version, type, blob
    FROM checkpoint_blobs WHERE thread_id = :old
    """
)
_COPY_WRITES = text(
    """
    INSERT INTO checkpoint_writes
        (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
    SELECT CAST(:new AS text), checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel,
        type, blob
    FROM checkpoint_writes WHERE thread_id = :old
    """
)


async def copy_thread(store: Store, source: uuid.UUID) -> ThreadRow | None:
    """The new thread, copied from `source` (None when `source` is not there)."""
    new, stamp = uuid.uuid4(), now()
    async with store.engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            meta = (
                await conn.execute(_COPY_THREAD, {"new": new, "old": source, "now": stamp})
            ).scalar()
            if meta is None:
                return None
            names = {"new": str(new), "old": str(source)}
            for statement in (_COPY_CHECKPOINTS, _COPY_BLOBS, _COPY_WRITES):
                await conn.execute(statement, names)
    return ThreadRow(id=new, meta=meta, create_time=stamp, update_time=stamp)
