"""LangGraph's PostgreSQL checkpointer on a psycopg pool, its tables set up once per database.

After a PostgreSQL restart a run gets a new connection instead of a dead one (and while
PostgreSQL is down, waits up to the pool's timeout for it to come back): the pool checks a
connection before handing it out — with a round trip only when the server has said something
to it while it was idle (`_check_if_spoken_to`), which an idle connection hears only when the
server closes it. A step's checkpoint writes take a connection each, so a check per checkout
was a round trip per write.

A pick-up checkpoints through `RunSaver` (`for_pickup`): one pooled connection for its whole
pick-up instead of a checkout per read and write, the thread's latest checkpoint read once
for both the executor (start, resume or continue?) and LangGraph's own first read, and each
step's checkpoint stored while the step's nodes already run (written behind, in order: see
`RunSaver`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import math
import select
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from langgraph.pregel._task_status import CONTROL_WRITES, read_task_statuses
from psycopg import AsyncConnection, OperationalError
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from amelia_agents.locks import still_held
from amelia_common.db import libpq_url
from amelia_common.settings import Settings

_SETUP_LOCK = zlib.crc32(b"amelia_agents_checkpoints") & 0x7FFFFFFF
# Polled, not waited for: a replica blocked in pg_advisory_lock holds a snapshot open, and the
# setup's CREATE INDEX CONCURRENTLY in the replica holding the lock waits for every open snapshot
# to end — both would hang (seen with two replicas starting together on a fresh database).
_LOCK_POLL_SECONDS = 0.2


# How long the checkpoint pool retries a connection that failed before leaving it to the next
# checkout (see `open_checkpointer`): its retries are 1 and 2 s apart within it.
RECONNECT_GIVE_UP_SECONDS = 4.0


async def open_checkpointer(
    settings: Settings, max_size: int | None = None
) -> tuple[AsyncConnectionPool, AsyncPostgresSaver]:
    """A pool and a saver on it; the saver's tables are created/migrated under an advisory lock.

    A pick-up holds one of the pool's connections (`RunSaver`): the caller sizes the pool for
    its worker loops (`resources.open_resources`: DATABASE_POOL_SIZE plus one per loop)."""
    pool: AsyncConnectionPool = AsyncConnectionPool(
        conninfo=libpq_url(settings.DATABASE_URL),
        min_size=1,
        max_size=max_size or settings.DATABASE_POOL_SIZE,
        # What AsyncPostgresSaver expects of its connections, and (a frozen PostgreSQL) how long
        # a new one waits for an answer: libpq's whole seconds, at least 2.
        kwargs={
            "autocommit": True,
            "prepare_threshold": 0,
            "row_factory": dict_row,
            "connect_timeout": max(2, math.ceil(settings.DATABASE_CONNECT_TIMEOUT_SECONDS)),
        },
        # A checkout that finds every connection busy, or none it can open, fails then
        # (PoolTimeout: UNAVAILABLE naming PostgreSQL) instead of after the pool's 30 s.
        timeout=settings.DATABASE_POOL_TIMEOUT_SECONDS,
        # psycopg_pool retries a failed connect with a delay doubling without bound (1, 2, 4,
        # 8, 16 s…) until this much time passed, so after a long outage it would not try again
        # for tens of seconds though PostgreSQL was back, and every pick-up's checkout meanwhile
        # timed out. Giving up early ends that schedule: the next checkout tries at once.
        reconnect_timeout=RECONNECT_GIVE_UP_SECONDS,
        open=False,
        check=_check_if_spoken_to,
        name="amelia-agents-checkpoints",
    )
    await pool.open(wait=True, timeout=30)
    saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
    try:
        async with pool.connection() as conn:
            await _take_setup_lock(conn)
            try:
                await saver.setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))
    except BaseException:
        await pool.close()  # the caller never gets the pool to close
        raise
    return pool, saver


async def _check_if_spoken_to(conn: AsyncConnection[Any]) -> None:
    """Pool checkout: raise (the pool opens another connection) if `conn` is closed, or if the
    server sent it something while it was idle and a round trip then finds it dead."""
    if conn.closed or _readable(conn.fileno()):
        await AsyncConnectionPool.check_connection(conn)


def _readable(fd: int) -> bool:
    """Whether the socket has something to read (or its end) right now, without waiting."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


async def _take_setup_lock(conn: AsyncConnection[Any]) -> None:
    while True:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s) AS taken", (_SETUP_LOCK,))
        row = await cursor.fetchone()
        if row and row["taken"]:
            return
        await asyncio.sleep(_LOCK_POLL_SECONDS)


_NOTHING_KEPT: Any = object()
# The graph's own input step: its writes only map the run's input (no node's code ran).
_START_TASK_PATH = "~__pregel_pull, __start__"
# A checkpoint written behind whose connection PostgreSQL closed is written again on a new
# one (its statements are upserts), this many times in all.
_WRITE_BEHIND_ATTEMPTS = 3
# Inside a checkpoint's write behind: (set once it is serialized, the write before it).
_BEHIND: contextvars.ContextVar[tuple[asyncio.Future[None], asyncio.Task[None] | None] | None] = (
    contextvars.ContextVar("amelia_checkpoint_behind", default=None)
)


# A checkpoint in one statement: its channel blobs (AsyncPostgresSaver's blob upsert, one row per
# array element) and its row (AsyncPostgresSaver's checkpoint upsert), one implicit transaction as
# in the library's pipeline. One message to PostgreSQL instead of a pipeline's four sends (each
# statement, its sync, a flush), a syscall each: most of a step's checkpoint CPU here.
_STORE_CHECKPOINT_SQL = """
    WITH blobs AS (
        INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
        SELECT %(thread_id)s, %(checkpoint_ns)s, b.channel, b.version, b.type, b.blob
        FROM unnest(%(channels)s::text[], %(versions)s::text[], %(types)s::text[],
                    %(blobs)s::bytea[]) AS b(channel, version, type, blob)
        ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING
    )
    INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
                             checkpoint, metadata)
    VALUES (%(thread_id)s, %(checkpoint_ns)s, %(checkpoint_id)s, %(parent_id)s,
            %(checkpoint)s, %(metadata)s)
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id)
    DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata
"""
# A task's writes in one statement (AsyncPostgresSaver's, one row per array element): upserted
# when every channel is a special one (`WRITES_IDX_MAP`), else inserted once.
_STORE_WRITES_SQL = """
    INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path,
                                   idx, channel, type, blob)
    SELECT %(thread_id)s, %(checkpoint_ns)s, %(checkpoint_id)s, %(task_id)s, %(task_path)s,
           w.idx, w.channel, w.type, w.blob
    FROM unnest(%(idx)s::integer[], %(channels)s::text[], %(types)s::text[],
                %(blobs)s::bytea[]) AS w(idx, channel, type, blob)
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
"""
_WRITES_UPSERT = (
    " DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob"
)
_WRITES_INSERT = " DO NOTHING"


class RunSaver(AsyncPostgresSaver):
    """The checkpointer of one pick-up, on one connection of the shared pool held for it.

    The pool's saver checks a connection out (and back) for every read and write — about five
    per node — and serializes all of them, every run's, on its one lock. A pick-up's reads and
    writes are sequential anyway (LangGraph awaits each under durability "sync"), so it keeps
    one connection, checked before each use as the pool checks one (`_check_if_spoken_to`)
    and replaced from the pool if PostgreSQL closed it (a restart while a node ran).

    `keep_latest_read()`: the next read of the thread's latest checkpoint keeps its row, and
    the read after it is answered from that row (decoded afresh from a copy, as a second read
    from PostgreSQL would be). The executor reads the checkpoint to choose how to start, then
    LangGraph reads it again to start; nothing writes to the thread between the two (the run's
    lock, one active run per thread), and any write through this saver forgets the row.

    **Checkpoints written behind.** Under durability "sync" LangGraph awaits each step's
    checkpoint before the step's nodes start: before a run's first node, three writes in a row
    (the input checkpoint, the `__start__` writes, the step-0 checkpoint), then one per node.
    Here `aput` returns once the checkpoint is serialized and the writes of the nodes that ran
    before it are stored; its own statements go out behind, while the next node runs, and
    every later read or write on the connection waits for them (one order: the order of the
    calls). What a crash can lose is therefore only a checkpoint that the stored one before it
    and the stored writes of its nodes give again: LangGraph resumes from the last stored
    checkpoint, finds every finished node's writes, runs none of them again, and makes the
    lost checkpoint afresh — as when a crash falls in the middle of a step. A node never
    starts before the writes of the nodes before it are stored, as under "sync". The input
    step's writes (`__start__`) are no node's work: the run's row has the input to give them
    again. A checkpoint written behind whose connection
    PostgreSQL closed is written again on a new one; any other failure fails the next read,
    write or `drain()` (the pick-up stops; the job is tried again). `drain()` returns once
    everything is stored: the executor calls it before recording the run's end or pause.
    """

    def __init__(
        self, pool: AsyncConnectionPool[Any], conn: AsyncConnection[Any], shared: AsyncPostgresSaver
    ) -> None:
        super().__init__(conn, serde=shared.serde)
        self.pool = pool
        self._keep_next = False
        self._keeping = False
        self._kept: Any = _NOTHING_KEPT
        self._behind: asyncio.Task[None] | None = None  # the last checkpoint written behind
        self._node_writes: set[asyncio.Future[None]] = set()  # nodes' writes not stored yet
        self._failure: BaseException | None = None
        self._given_back = False  # `conn` broke and is back in the pool (`release`)
        # The pick-up's events given so far, stored (`executor.EndsAfterWrites.settled`, given
        # the task: not its own end): a node's writes wait for it, so a node whose result is
        # recorded has all its tokens in the log. Without it, NATS frozen under a node that
        # went on to its end lost the rest of its tokens for good: the next pick-up found the
        # node's writes and did not run it again (QA s22).
        self.events_stored: Callable[[str], Awaitable[None]] | None = None
        # Each task's writes given and not stored yet, or failed (the future's result: None
        # once stored, else the error): the executor publishes a node's end only once its
        # writes are stored (`writes_stored`). Before, LangGraph handed the end over while the
        # writes were still on their way, so the end could be in the log with PostgreSQL gone
        # before the writes were: the next pick-up ran the node again, and a client that kept
        # its text (it had finished) showed it twice.
        self._task_writes: dict[str, list[asyncio.Future[BaseException | None]]] = {}

    async def release(self) -> None:
        """Give the held connection back to the pool, once: a broken one given back while no
        other could be had (PoolTimeout) is not given back again (each return of a broken
        connection makes the pool open a replacement, beyond its max_size)."""
        conn = self.conn
        assert isinstance(conn, AsyncConnection)
        if not self._given_back:
            self._given_back = True
            await self.pool.putconn(conn)

    def keep_latest_read(self) -> None:
        self._keep_next = True

    async def drain(self) -> None:
        """Return once every checkpoint and write given so far is stored; raise the error of
        one that could not be."""
        await self._settle(self._behind, *self._node_writes)
        self._raise_failure()

    async def _settle(self, *pending: asyncio.Future[Any] | None) -> None:
        waiting = [future for future in pending if future is not None and not future.done()]
        if waiting:
            await asyncio.wait(waiting)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    @contextlib.asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[Any]:
        """AsyncPostgresSaver's cursor (no pipe of its own), on the held connection checked
        first, under the lock: a check only when nothing else is in flight on it. Behind the
        checkpoint written behind before it (see the class)."""
        behind = _BEHIND.get()
        if behind is None:
            await self._settle(self._behind)
        else:  # the write behind itself: serialized now; its turn after the one before it
            serialized, previous = behind
            if not serialized.done():
                serialized.set_result(None)
            await self._settle(previous)
        self._raise_failure()
        await still_held()  # nothing more once another worker has the run (`locks`: fencing)
        async with self.lock:
            conn = self.conn
            assert isinstance(conn, AsyncConnection)
            try:
                await _check_if_spoken_to(conn)
            except Exception:  # noqa: BLE001 - closed by the server: take another
                await self.release()
                conn = self.conn = await self.pool.getconn()
                self._given_back = False
            if pipeline and self.supports_pipeline:
                async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            elif pipeline:
                async with (
                    conn.transaction(),
                    conn.cursor(binary=True, row_factory=dict_row) as cur,
                ):
                    yield cur
            else:
                async with conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        latest = get_checkpoint_id(config) is None and not config["configurable"].get(
            "checkpoint_ns", ""
        )
        if latest and self._kept is not _NOTHING_KEPT:
            row, self._kept = self._kept, _NOTHING_KEPT
            return None if row is None else await self._load_checkpoint_tuple(copy.deepcopy(row))
        keep, self._keep_next = latest and self._keep_next, False
        if keep:
            self._kept = None  # what is kept when the thread has no checkpoint yet
        self._keeping = keep
        try:
            return await super().aget_tuple(config)
        finally:
            self._keeping = False

    async def _load_checkpoint_tuple(self, value: DictRow) -> CheckpointTuple:
        if self._keeping:
            self._keeping = False
            self._kept = copy.deepcopy(value)
        return await super()._load_checkpoint_tuple(value)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store the checkpoint behind (see the class): returns once it is serialized and the
        nodes' writes given before it are stored."""
        self._kept = _NOTHING_KEPT
        await self._settle(*self._node_writes)
        self._raise_failure()
        # The next step's nodes start once this returns: not after another worker took over.
        await still_held()
        serialized = asyncio.get_running_loop().create_future()
        write = asyncio.create_task(
            self._write_behind(
                (serialized, self._behind), config, checkpoint, metadata.copy(), new_versions
            )
        )
        self._behind = write
        await asyncio.wait((serialized, write), return_when=asyncio.FIRST_COMPLETED)
        if not serialized.done():  # it failed before its statements: as an awaited write
            self._raise_failure()
        return {
            "configurable": {
                "thread_id": config["configurable"]["thread_id"],
                "checkpoint_ns": config["configurable"]["checkpoint_ns"],
                "checkpoint_id": checkpoint["id"],
            }
        }

    async def _write_behind(
        self,
        behind: tuple[asyncio.Future[None], asyncio.Task[None] | None],
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> None:
        """`aput`'s statements, after the write before them (their failure kept, not raised:
        the next read, write or `drain` raises it)."""
        _BEHIND.set(behind)
        for attempt in range(1, _WRITE_BEHIND_ATTEMPTS + 1):
            try:
                await self._store(config, checkpoint, metadata, new_versions)
                return
            except OperationalError as exc:
                conn = self.conn
                closed = isinstance(conn, AsyncConnection) and conn.closed
                if closed and attempt < _WRITE_BEHIND_ATTEMPTS and self._failure is None:
                    continue  # `_cursor` takes a new connection from the pool
                self._failure = self._failure or exc
                return
            except BaseException as exc:
                self._failure = self._failure or exc
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return

    def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> Coroutine[Any, Any, None]:
        """Store a task's writes (awaiting the events before them, `events_stored`).

        Not a coroutine function: the call itself registers the writes under their task
        (`writes_stored`), and LangGraph makes it before it hands the task's end to the
        stream, while the returned coroutine runs only later (on the loop, as a task of its
        own). So the executor, given a task's end, always finds its writes to wait for."""
        self._kept = _NOTHING_KEPT
        if task_path == _START_TASK_PATH:
            return self._store_writes(config, writes, task_id, task_path)
        told: asyncio.Future[BaseException | None] | None = None
        with contextlib.suppress(RuntimeError):  # (called off the loop: nothing to wait for)
            told = asyncio.get_running_loop().create_future()
            self._task_writes.setdefault(task_id, []).append(told)
        return self._put_node_writes(told, config, writes, task_id, task_path)

    async def _put_node_writes(
        self,
        told: asyncio.Future[BaseException | None] | None,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> None:
        stored = asyncio.get_running_loop().create_future()
        self._node_writes.add(stored)
        failure: BaseException | None = None
        try:
            if self.events_stored is not None:
                await self.events_stored(task_id)
            await self._store_writes(config, writes, task_id, task_path)
        except BaseException as exc:
            failure = exc
            if not isinstance(exc, asyncio.CancelledError):
                self._failure = self._failure or exc
            raise
        finally:
            self._node_writes.discard(stored)
            stored.set_result(None)
            if told is not None and not told.done():
                told.set_result(failure)
            if failure is None:  # a failed one stays: the task's end is never told
                self._forget_stored(task_id)

    def _forget_stored(self, task_id: str) -> None:
        pending = [
            told
            for told in self._task_writes.get(task_id, ())
            if not told.done() or told.result() is not None
        ]
        if pending:
            self._task_writes[task_id] = pending
        else:
            self._task_writes.pop(task_id, None)

    def writes_stored_now(self, task_id: str) -> bool | None:
        """`writes_stored` without waiting: None while a write of the task is on its way."""
        given = self._task_writes.get(task_id, ())
        if any(not told.done() for told in given):
            return None
        return all(told.result() is None for told in given)

    async def writes_stored(self, task_id: str) -> bool:
        """Once every write of `task_id` given so far is stored or failed: whether all are
        stored (True for a task that gave none). The executor publishes a node's end only then,
        so an end in the log means LangGraph finds the node's writes and does not run it again;
        a failed write stops the pick-up (LangGraph raises it, and so do `aput` and `drain`)."""
        given = list(self._task_writes.get(task_id, ()))
        waiting = [told for told in given if not told.done()]
        if waiting:
            await asyncio.wait(waiting)
        return all(told.result() is None for told in given)

    async def _store(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> None:
        """`AsyncPostgresSaver.aput`'s rows (langgraph-checkpoint-postgres 3.x) in one statement
        (`_STORE_CHECKPOINT_SQL`), its channel values serialized here instead of in a thread
        (`asyncio.to_thread`).

        Serializing holds the GIL either way, so the thread let nothing else run meanwhile; it
        only cost a hop to the thread pool and a wake-up of the event loop back (a write to its
        self-pipe) per checkpoint, several per node, on the way to the first token."""
        configurable = config["configurable"]
        thread_id, checkpoint_ns = configurable["thread_id"], configurable["checkpoint_ns"]
        stored = dict(checkpoint)
        stored["channel_values"] = inline = dict(checkpoint["channel_values"])
        # Primitive values stay inline in the checkpoint's row; the others go to blobs.
        blob_values = {}
        for key, value in checkpoint["channel_values"].items():
            if isinstance(value, _DeltaSnapshot):
                blob_values[key] = inline.pop(key)
                inline[key] = True
            elif value is not None and not isinstance(value, (str, int, float, bool)):
                blob_values[key] = inline.pop(key)
        versions = {k: v for k, v in new_versions.items() if k in blob_values}
        blobs = self._dump_blobs(thread_id, checkpoint_ns, blob_values, versions)
        params = {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            **_columns(blobs, channels=2, versions=3, types=4, blobs=5),
            "checkpoint_id": checkpoint["id"],
            "parent_id": configurable.get("checkpoint_id"),
            "checkpoint": Jsonb(stored),
            "metadata": Jsonb(get_serializable_checkpoint_metadata(config, metadata)),
        }
        async with self._cursor() as cur:
            await cur.execute(_STORE_CHECKPOINT_SQL, params)

    async def _store_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> None:
        """`AsyncPostgresSaver.aput_writes`' rows in one statement (`_STORE_WRITES_SQL`),
        serialized here (as `_store`)."""
        configurable = config["configurable"]
        upsert = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        rows = self._dump_writes(
            configurable["thread_id"],
            configurable["checkpoint_ns"],
            configurable["checkpoint_id"],
            task_id,
            task_path,
            writes,
        )
        # One row per idx, as the library's statement per write left it: its upsert keeps the
        # last write of an idx, its insert the first (one statement may not touch a row twice).
        by_idx: dict[int, tuple[Any, ...]] = {}
        for row in rows:
            if upsert or row[5] not in by_idx:
                by_idx[row[5]] = row
        kept = list(by_idx.values())
        params = {
            "thread_id": configurable["thread_id"],
            "checkpoint_ns": configurable["checkpoint_ns"],
            "checkpoint_id": configurable["checkpoint_id"],
            "task_id": task_id,
            "task_path": task_path,
            **_columns(kept, idx=5, channels=6, types=7, blobs=8),
        }
        query = _STORE_WRITES_SQL + (_WRITES_UPSERT if upsert else _WRITES_INSERT)
        async with self._cursor() as cur:
            await cur.execute(query, params)

    async def adelete_thread(self, thread_id: str) -> None:
        self._kept = _NOTHING_KEPT
        await super().adelete_thread(thread_id)


def _columns(rows: Sequence[tuple[Any, ...]], **index: int) -> dict[str, list[Any]]:
    """Columns of `rows` by name (name=position): the arrays a statement `unnest`s."""
    return {name: [row[i] for row in rows] for name, i in index.items()}


# Set on the checkpoint a run without input continued from (its first step's, written by an
# UpdateThreadState or by the run before it): the runs that executed its tasks, in order, so
# the step is listed as theirs (`steps.history`). A list: a continuation cancelled while
# paused there leaves the step to the next one.
CONTINUED_KEY = "amelia_continued_by"
_MARK_CONTINUED_SQL = """
UPDATE checkpoints
SET metadata = metadata || jsonb_build_object(
    %(key)s::text, COALESCE(metadata -> %(key)s, '[]'::jsonb) || to_jsonb(%(run)s::text))
WHERE thread_id = %(thread)s AND checkpoint_ns = '' AND checkpoint_id = %(checkpoint)s
  AND NOT COALESCE(metadata -> %(key)s, '[]'::jsonb) ? %(run)s
"""


async def mark_continued(
    saver: BaseCheckpointSaver[Any], config: RunnableConfig, run_id: str
) -> None:
    """Name `run_id` among the runs that continued the checkpoint `config` names (once; a
    retried pick-up adds nothing). Savers other than PostgreSQL's keep no such mark."""
    if not isinstance(saver, AsyncPostgresSaver):
        return
    configurable = config["configurable"]
    params = {
        "key": CONTINUED_KEY,
        "run": run_id,
        "thread": str(configurable["thread_id"]),
        "checkpoint": str(configurable["checkpoint_id"]),
    }
    async with saver._cursor() as cur:
        await cur.execute(_MARK_CONTINUED_SQL, params)


# Which of a thread's tasks have an output write stored: LangGraph's own rule for a finished
# task (`langgraph.pregel._task_status`: a write to any channel but its control ones — an
# interrupt, an answer, an error — and `NO_WRITES` for a task that wrote nothing).
_FINISHED_TASKS_SQL = """
SELECT DISTINCT task_id FROM checkpoint_writes
WHERE thread_id = %(thread)s AND checkpoint_ns = '' AND task_id = ANY(%(tasks)s)
  AND NOT channel = ANY(%(control)s)
"""


async def finished_tasks(
    saver: BaseCheckpointSaver[Any], thread_id: str, task_ids: Collection[str]
) -> set[str]:
    """Which of `task_ids` (tasks of the thread's graph) finished, by their writes stored in
    the thread's checkpoints — of any checkpoint: a step's checkpoint may have been stored
    after them — those LangGraph finds on a resume, and then does not run the task again."""
    if not task_ids:
        return set()
    if isinstance(saver, AsyncPostgresSaver):
        params = {"thread": thread_id, "tasks": list(task_ids), "control": sorted(CONTROL_WRITES)}
        async with saver._cursor() as cur:
            await cur.execute(_FINISHED_TASKS_SQL, params)
            return {str(row["task_id"]) for row in await cur.fetchall()}
    wanted = set(task_ids)
    found: set[str] = set()
    async for saved in saver.alist({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}):
        statuses = read_task_statuses(saved.pending_writes or ())
        found.update(
            task for task, status in statuses.items() if task in wanted and status.finished
        )
    return found


@contextlib.asynccontextmanager
async def for_pickup(saver: BaseCheckpointSaver[Any]) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """The saver one pick-up uses: a `RunSaver` on a connection of `saver`'s pool, given back
    at the end (the pool discards it if it broke); any other saver as it is."""
    pool = getattr(saver, "conn", None)
    if not isinstance(saver, AsyncPostgresSaver) or not isinstance(pool, AsyncConnectionPool):
        yield saver
        return
    run_saver = RunSaver(pool, await pool.getconn(), saver)
    try:
        yield run_saver
    finally:
        # Nothing may still be writing on the connection when it goes back to the pool.
        with contextlib.suppress(BaseException):
            await asyncio.shield(run_saver.drain())
        await run_saver.release()
