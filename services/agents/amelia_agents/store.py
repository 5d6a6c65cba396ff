"""Reads and state transitions of agents, threads and runs in PostgreSQL.

Every run transition (`runstate`: its sources and target) is one conditional UPDATE (`... WHERE status IN (...) RETURNING`), so the
API and any number of workers can race on a run and exactly one of them wins; the loser learns
the current status and reports it (FAILED_PRECONDITION for a second cancel, a skipped job for a
worker).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    Row,
    Select,
    Text,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from amelia_agents import pgdriver, runstate
from amelia_agents.locks import LOCK_NOT_AVAILABLE, LockLostError, RunLock
from amelia_agents.models import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    AgentRow,
    RunRow,
    RunState,
    ThreadRow,
)
from amelia_agents.pgdriver import DriverStatement
from amelia_common.db import select_one

# CreateRun holds a transaction-level lock on (RECORDING_LOCK_SPACE, recording_key(run)) until its
# transaction ends. Two-key advisory locks never collide with the run locks' one-key ones.
RECORDING_LOCK_SPACE = 0x616D
# Waits for a CreateRun's commit: `set_config(..., true)` holds for this statement's implicit
# transaction only, and is evaluated before the lock (left to right), so the wait is bounded.
_WAIT_RECORDED = text(
    "SELECT set_config('lock_timeout', :timeout, true), pg_advisory_xact_lock_shared(:space, :key)"
)


def recording_key(run_id: uuid.UUID) -> int:
    """A signed 32-bit key for the run in RECORDING_LOCK_SPACE (a collision only makes a worker
    wait for another CreateRun's commit)."""
    return int.from_bytes(run_id.bytes[:4], "big", signed=True)


class ActiveRunError(Exception):
    """The thread already has a queued, running or paused run."""


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RunFilter:
    statuses: Sequence[str] = ()
    agent_id: str | None = None
    workflow: str | None = None
    thread_id: uuid.UUID | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    # ListRuns' compiled `filter` (see `filtering`).
    condition: ColumnElement[bool] | None = None


@dataclass
class ThreadSummary:
    """A thread with what a list of threads shows of it."""

    row: ThreadRow
    run_count: int
    preview: str
    # One of THREAD_STATUSES, and the thread's newest run (its id and status), if any.
    status: str = "idle"
    latest_run: tuple[uuid.UUID, str] | None = None

    @property
    def id(self) -> uuid.UUID:
        return self.row.id

    @property
    def create_time(self) -> datetime:
        return self.row.create_time

    @property
    def update_time(self) -> datetime:
        return self.row.update_time


def _open_change(column: Any, open_now: bool, name: str) -> Any:
    """`column` plus the bound change `name` when the run is still at the writer's attempt
    (`open_now`) or when it is not (not `open_now`): what a pick-up taken over writes late goes
    to `interrupted_*` at once, the next pick-up having moved the rest already."""
    at_attempt = RunRow.attempt == bindparam("attempt", type_=Integer)
    change = bindparam(name, type_=BigInteger)
    return column + case((at_attempt, change if open_now else 0), else_=0 if open_now else change)


# A model call's tokens added to its run, and the change of the tokens of its pick-up's nodes
# not finished yet (`RunRow.open_*`): built once (a run makes one per model call, and building
# the statement cost more CPU than sending it), executed outside the ORM.
_ADD_USAGE = DriverStatement(
    update(RunRow)
    .where(RunRow.id == bindparam("run_id"))
    .values(
        input_tokens=RunRow.input_tokens + bindparam("added_input", type_=BigInteger),
        output_tokens=RunRow.output_tokens + bindparam("added_output", type_=BigInteger),
        open_input_tokens=_open_change(RunRow.open_input_tokens, True, "open_input"),
        open_output_tokens=_open_change(RunRow.open_output_tokens, True, "open_output"),
        interrupted_input_tokens=_open_change(RunRow.interrupted_input_tokens, False, "open_input"),
        interrupted_output_tokens=_open_change(
            RunRow.interrupted_output_tokens, False, "open_output"
        ),
    )
)
# A pick-up's start: the tokens of the nodes an earlier pick-up did not finish (it stopped or
# died first; they run again) are counted as interrupted. Fenced by the pick-up's attempt.
_COUNT_INTERRUPTED = DriverStatement(
    update(RunRow)
    .where(
        RunRow.id == bindparam("run_id"),
        RunRow.attempt == bindparam("attempt", type_=Integer),
    )
    .values(
        interrupted_input_tokens=RunRow.interrupted_input_tokens + RunRow.open_input_tokens,
        interrupted_output_tokens=RunRow.interrupted_output_tokens + RunRow.open_output_tokens,
        open_input_tokens=0,
        open_output_tokens=0,
    )
)

# The runs table: a run's reads and transitions go through SQLAlchemy Core, outside the ORM.
# A run makes several (claim, finish, its end's sequence, StreamRun's read), and an ORM UPDATE
# ... RETURNING (its identity map, its evaluation of the new values on loaded objects) cost
# several times the CPU of the statement; the RunRow given back is built from the row.
_RUNS = RunRow.__table__


# Mapped classes are configured on their first construction; a new instance made as below is
# not one (a worker process may build a RunRow this way before any other): configured here.
RunRow.registry.configure()
_NEW_RUN_ROW = RunRow._sa_class_manager.new_instance


def _run_row(found: Any) -> RunRow | None:
    """A RunRow (not attached to any session) of a `runs` row read with all its columns (a
    SQLAlchemy row, or an asyncpg record: `pgdriver`).

    Built as SQLAlchemy's loader builds one — a new instance, its attributes' values put in
    its `__dict__` — instead of `RunRow(**values)`, whose set event per attribute cost ~50 µs
    of CPU per row against ~3 (session 16, docs/performance.md); a run reads several. Reading
    and setting its attributes work as on any transient RunRow."""
    if found is None:
        return None
    row = _NEW_RUN_ROW()
    row.__dict__.update(found._mapping if isinstance(found, Row) else found)
    return row


def _set_values(row: RunRow) -> dict[str, Any]:
    """The columns of `row` that were given a value (the others take their defaults)."""
    given = inspect(row).dict
    return {column.key: given[column.key] for column in _RUNS.c if column.key in given}


# The run's reads and transitions on its path go to asyncpg (`pgdriver`): SQLAlchemy's work
# around each statement cost ~140 µs of CPU, several times the driver's.
_GET_RUN = DriverStatement(select(_RUNS).where(_RUNS.c.id == bindparam("run_id")))
# An existing thread's row, locked as `create_behind` locks it: CreateRuns on a thread one at a
# time, and the recording statement after it reads what the one before committed.
_LOCK_THREAD = DriverStatement(
    select(ThreadRow.__table__.c.id)
    .where(ThreadRow.__table__.c.id == bindparam("thread_id"))
    .with_for_update()
)


async def _read_run(pg: Any, run_id: uuid.UUID) -> RunRow | None:
    return _run_row(await _GET_RUN.fetchrow(pg, {"run_id": run_id}))


def _transition_statement(
    transition: runstate.Transition, values: dict[str, Any], *where: ColumnElement[bool]
) -> DriverStatement:
    """`transition` with `values` (named `bindparam`s, or SQL of the row), only from its
    sources (and where `where` holds), RETURNING the run; with `fence` (a worker's attempt, see
    `locks`), only while the run is still at that attempt."""
    fence = bindparam("fence", type_=Integer)
    return DriverStatement(
        update(_RUNS)
        .where(
            _RUNS.c.id == bindparam("run_id"),
            or_(*(_RUNS.c.status == source for source in transition.source_values)),
            fence.is_(None) | (_RUNS.c.attempt == fence),
            *where,
        )
        .values(status=transition.target.value, **values)
        .returning(*_RUNS.c)
    )


_WHEN = DateTime(timezone=True)
# Written twice: also in the function `runs_lock_and_claim` (migration agents_0009), a worker's
# lock and claim in one statement (`locks`); a change here needs a migration replacing it.
_CLAIM = _transition_statement(
    runstate.CLAIM,
    {
        "attempt": _RUNS.c.attempt + 1,
        "pickups": _RUNS.c.pickups + 1,
        "start_time": func.coalesce(_RUNS.c.start_time, bindparam("now", type_=_WHEN)),
        "worker": bindparam("worker", type_=Text),
    },
    _RUNS.c.queued_behind.is_(None),  # a run queued behind its thread's run (`multitask`)
)
# A pick-up's end: its output, error and the usage not stored yet, in one statement.
_ENDS = {
    status: _transition_statement(
        transition,
        {
            "output": bindparam("output", type_=JSONB),
            "error": bindparam("error", type_=Text),
            "end_time": bindparam("end_time", type_=_WHEN),
            "interrupt": None,
            "has_resume": False,
            "input_tokens": _RUNS.c.input_tokens + bindparam("added_input", type_=BigInteger),
            "output_tokens": _RUNS.c.output_tokens + bindparam("added_output", type_=BigInteger),
        },
    )
    for status, transition in runstate.ENDS.items()
}
_CANCEL = _transition_statement(
    runstate.CANCEL,
    {
        "error": bindparam("error", type_=Text),
        "end_time": bindparam("end_time", type_=_WHEN),
        "interrupt": None,
        "has_resume": False,
    },
)
_PAUSE = _transition_statement(
    runstate.PAUSE,
    {
        "interrupt": bindparam("interrupt", type_=JSONB),
        "has_resume": False,
        "resume_value": None,
        "question_sequence": None,  # set once its `run.interrupted` is in the log
    },
)
_RESUME = _transition_statement(
    runstate.RESUME,
    # `interrupt` stays: it names the question this answer is for.
    {
        "has_resume": True,
        "resume_value": bindparam("answer", type_=JSONB),
        "resume_request": bindparam("resume_request", type_=JSONB),
        "queue": bindparam("queue", type_=Text),
        "queued_time": bindparam("now", type_=_WHEN),
        "pickups": 0,
    },
)


def _recording_insert(row: RunRow, new_thread: bool) -> tuple[Insert, dict[str, Any]]:
    """CreateRun's one statement and its parameters (see `_recording_statement`)."""
    columns, params = _recording_params(row, new_thread)
    return _recording_statement(columns, new_thread), params


def _recording_params(row: RunRow, new_thread: bool) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The columns CreateRun's statement inserts, and its parameters."""
    values = _set_values(row)
    stamp = now()
    params = {f"run_{key}": value for key, value in values.items()}
    params.update(
        lock_space=RECORDING_LOCK_SPACE,
        lock_key=recording_key(row.id),
        thread_id=row.thread_id,
        thread_time=stamp,
    )
    if new_thread:
        params["thread_metadata"] = {}
    params["behind_waiting"] = row.queued_behind is not None
    return tuple(values), params


@functools.lru_cache(maxsize=16)
def _recording_driver(columns: tuple[str, ...], new_thread: bool) -> DriverStatement:
    return DriverStatement(_recording_statement(columns, new_thread))


@functools.lru_cache(maxsize=16)
def _recording_statement(columns: tuple[str, ...], new_thread: bool) -> Insert:
    """INSERT the run's `columns`, FROM its recording lock taken (`pg_advisory_xact_lock`, a
    materialized CTE the row is selected from, so it runs first), WITH the thread's INSERT
    (new; its update_time is its create_time) or its update_time (existing): one round trip.
    The run's foreign key to the thread is checked at the end of the statement, after both.
    Built once per set of columns (building it cost more CPU than sending it)."""
    locked = (
        select(
            func.pg_advisory_xact_lock(
                bindparam("lock_space", type_=Integer), bindparam("lock_key", type_=Integer)
            ).label("held")
        )
        .cte("recording_lock")
        .prefix_with("MATERIALIZED")
    )
    # Not on a thread with runs waiting behind its run (`multitask`): they come first, and the
    # run they wait for may still be unwinding (a run queued behind it passes `queued_behind`).
    waiting = exists().where(
        _RUNS.c.thread_id == bindparam("thread_id"),
        _RUNS.c.status == RunState.QUEUED.value,
        _RUNS.c.queued_behind.is_not(None),
    )
    source = (
        select(*(bindparam(f"run_{key}", type_=_RUNS.c[key].type).label(key) for key in columns))
        .select_from(locked)
        .where(bindparam("behind_waiting", type_=Boolean) | ~waiting)
    )
    threads = ThreadRow.__table__
    thread_change = (
        insert(threads).values(
            id=bindparam("thread_id"),
            metadata=bindparam("thread_metadata"),
            create_time=bindparam("thread_time"),
            update_time=bindparam("thread_time"),
        )
        if new_thread
        else update(threads)
        .where(threads.c.id == bindparam("thread_id"))
        .values(update_time=bindparam("thread_time"))
    )
    return (
        insert(_RUNS).from_select(list(columns), source).add_cte(thread_change.cte("thread_change"))
    )


def _unsettled(thread_id: ColumnElement[Any]) -> ColumnElement[bool]:
    """Whether the thread has runs waiting behind its run, or rolled back and not deleted yet
    (`multitask.settle` has something to do)."""
    other = _RUNS.alias("other")
    return exists().where(
        other.c.thread_id == thread_id,
        or_(
            and_(
                other.c.status == RunState.QUEUED.value,
                other.c.queued_behind.is_not(None),
            ),
            other.c.rolled_back,
        ),
    )


# The sequence of the run's end event kept; whether its thread has runs to settle.
_TERMINAL_SEQUENCE = DriverStatement(
    update(_RUNS)
    .where(_RUNS.c.id == bindparam("run_id"))
    .values(terminal_sequence=bindparam("sequence", type_=BigInteger))
    .returning(_unsettled(_RUNS.c.thread_id))
)
# The sequence of a PAUSED run's question kept (its webhook's pause delivery is due then), only
# while it is still paused on that question.
_QUESTION_SEQUENCE = DriverStatement(
    update(_RUNS)
    .where(
        _RUNS.c.id == bindparam("run_id"),
        _RUNS.c.status == RunState.PAUSED.value,
        _RUNS.c.interrupt == bindparam("interrupt", type_=JSONB),
    )
    .values(question_sequence=bindparam("sequence", type_=BigInteger))
)

_ACTIVE_VALUES = [state.value for state in ACTIVE_STATES]
_ENDED_VALUES = [state.value for state in TERMINAL_STATES]

# The thread's first waiting run admitted (its job is queued by the caller once this
# committed), the others now waiting behind it — only while the thread has no admitted active
# run (the unique index `uq_runs_active_thread` settles a race: the loser changes nothing).
_ADMIT = text(
    """
    WITH first AS (
        SELECT id FROM runs
        WHERE thread_id = :thread AND status = 'QUEUED' AND queued_behind IS NOT NULL
        AND NOT EXISTS (
            SELECT 1 FROM runs a WHERE a.thread_id = :thread
            AND a.status IN ('QUEUED', 'RUNNING', 'PAUSED') AND a.queued_behind IS NULL
        )
        ORDER BY create_time, id LIMIT 1
        FOR UPDATE
    )
    UPDATE runs SET
        queued_behind = CASE WHEN runs.id = first.id THEN NULL ELSE first.id END,
        queued_time = CASE WHEN runs.id = first.id THEN :now ELSE runs.queued_time END,
        queue = CASE WHEN runs.id = first.id THEN :queue ELSE runs.queue END
    FROM first
    WHERE runs.thread_id = :thread AND runs.status = 'QUEUED' AND runs.queued_behind IS NOT NULL
    RETURNING runs.id, runs.queued_behind IS NULL AS admitted
    """
)


@dataclass
class ThreadTurn:
    """Where a thread's runs stand for `multitask.settle`: its latest run a worker started (the
    only one whose executor may still be running: the runs of a thread execute one after the
    other) and its status, and whether the thread has an admitted active run."""

    last_started: uuid.UUID | None
    last_status: str | None
    busy: bool


THREAD_ORDERS = ("create_time", "create_time desc", "update_time", "update_time desc")
# A thread's status (LangGraph Server's): a run paused on a question, else one queued or running,
# else its newest run failed, else idle.
THREAD_STATUSES = ("idle", "busy", "interrupted", "error")
_BUSY_VALUES = (RunState.QUEUED.value, RunState.RUNNING.value)
PREVIEW_LENGTH = 200
# The statuses only a thread with an active run can have (a paused run; a queued or running one).
_ACTIVE_THREAD_STATUSES = ("busy", "interrupted")


def _active_threads() -> Select[Any]:
    """The threads with a queued, running or paused run: the admitted ones (one a thread, in
    `uq_runs_active_thread`) and those waiting behind them (`ix_runs_waiting`). Each branch
    states its index's predicate as SQL text, not parameters: a prepared statement's generic
    plan cannot prove a partial index's predicate from parameters, and would read every run."""
    runs = RunRow.__table__
    admitted = select(runs.c.thread_id).where(
        text("status IN ('QUEUED', 'RUNNING', 'PAUSED') AND queued_behind IS NULL")
    )
    waiting = select(runs.c.thread_id).where(
        text("status = 'QUEUED' AND queued_behind IS NOT NULL")
    )
    return select(admitted.union_all(waiting).subquery().c.thread_id)


class Store:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        # The engine the sessions are bound to (`db.session_factory` binds one): a run's lock
        # needs a connection of its own, outside any session.
        self.engine: AsyncEngine = sessions.kw["bind"]
        # A one-statement read or change needs no transaction around it: without BEGIN and
        # COMMIT (or ROLLBACK) it is one round trip instead of three (a run takes several).
        self.autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.single_statements = async_sessionmaker(self.autocommit, expire_on_commit=False)

    async def ping(self) -> None:
        """Raise PostgreSQL's error unless it answers now."""
        await select_one(self.engine)

    def run_lock(self, run_id: uuid.UUID) -> RunLock:
        """The run's lock (not taken yet): one executor per run, see `locks`; it can wait for
        the run's recording too."""
        return RunLock(self.engine, run_id, (RECORDING_LOCK_SPACE, recording_key(run_id)))

    # agents ---------------------------------------------------------------------------------

    async def create_agent(self, row: AgentRow) -> AgentRow:
        async with self.sessions() as s, s.begin():
            s.add(row)
        return row

    async def get_agent(self, agent_id: str) -> AgentRow | None:
        async with self.single_statements() as s:
            return await s.get(AgentRow, agent_id)

    async def list_agents(self, limit: int, after: tuple[datetime, str] | None) -> list[AgentRow]:
        query = select(AgentRow).order_by(AgentRow.create_time, AgentRow.id).limit(limit)
        if after:
            query = query.where(
                or_(
                    AgentRow.create_time > after[0],
                    and_(AgentRow.create_time == after[0], AgentRow.id > after[1]),
                )
            )
        async with self.single_statements() as s:
            return list((await s.scalars(query)).all())

    async def update_agent(self, agent_id: str, values: dict[str, Any]) -> AgentRow | None:
        async with self.sessions() as s, s.begin():
            row = await s.get(AgentRow, agent_id, with_for_update=True)
            if row is None:
                return None
            for key, value in values.items():
                setattr(row, key, value)
            row.update_time = now()
        return row

    async def delete_agent(self, agent_id: str) -> bool:
        async with self.sessions() as s, s.begin():
            result = await s.execute(delete(AgentRow).where(AgentRow.id == agent_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # threads --------------------------------------------------------------------------------

    async def create_thread(
        self, meta: dict[str, Any], thread_id: uuid.UUID | None = None
    ) -> tuple[ThreadRow, bool]:
        """The thread `thread_id` (a new id when None) with `meta`, and whether this call made
        it: an existing thread of that id is returned as it is. One `INSERT … ON CONFLICT DO
        NOTHING`: of two concurrent creates of one id, the second waits for the first's commit
        and inserts nothing, so there is one thread (a primary key, not a read-then-write)."""
        tid = thread_id or uuid.uuid4()
        stamp = now()
        threads = ThreadRow.__table__
        made = (
            pg_insert(threads)
            .values(id=tid, metadata=meta, create_time=stamp, update_time=stamp)
            .on_conflict_do_nothing(index_elements=[threads.c.id])
            .returning(threads.c.id)
        )
        while True:
            async with self.sessions() as s, s.begin():
                if await s.scalar(made) is not None:
                    return ThreadRow(id=tid, meta=meta, create_time=stamp, update_time=stamp), True
                existing = await s.get(ThreadRow, tid)
            if existing is not None:
                return existing, False
            # Deleted between the two statements: the id is free again, insert once more.

    async def update_thread(
        self, thread_id: uuid.UUID, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> ThreadRow | None:
        """The thread with its metadata replaced by `change(metadata)`, read and written under
        a row lock (two concurrent merges both land), its update_time now; None if it is not
        there. `change` may raise to refuse the result: nothing is written."""
        async with self.sessions() as s, s.begin():
            row = await s.get(ThreadRow, thread_id, with_for_update=True)
            if row is None:
                return None
            row.meta = change(dict(row.meta or {}))
            row.update_time = now()
        return row

    async def get_thread(self, thread_id: uuid.UUID) -> ThreadRow | None:
        async with self.single_statements() as s:
            return await s.get(ThreadRow, thread_id)

    @staticmethod
    @functools.cache
    def _summaries() -> Select[Any]:
        """Threads with their run count, preview, status and newest run: one statement, each
        thread's runs read through `ix_runs_thread` (no query per thread). Built once: building
        it cost several times what PostgreSQL takes to run it (a Select is immutable)."""
        return Store._summaries_of(ThreadRow)

    @staticmethod
    def _summaries_of(threads: Any) -> Select[Any]:
        """`_summaries` over `threads`: ThreadRow, or an aliased subquery of its rows."""
        runs = RunRow.__table__.alias("thread_runs")
        activity = (
            select(
                func.count().label("run_count"),
                func.bool_or(runs.c.status == RunState.PAUSED.value).label("paused"),
                func.bool_or(runs.c.status.in_(_BUSY_VALUES)).label("busy"),
            )
            .where(runs.c.thread_id == threads.id)
            .lateral("activity")
        )
        latest = (
            select(runs.c.id, runs.c.status)
            .where(runs.c.thread_id == threads.id)
            .order_by(runs.c.create_time.desc(), runs.c.id.desc())
            .limit(1)
            .lateral("latest")
        )
        first_message = (
            select(func.left(runs.c.input["message"].astext, PREVIEW_LENGTH))
            .where(runs.c.thread_id == threads.id)
            .order_by(runs.c.create_time, runs.c.id)
            .limit(1)
            .scalar_subquery()
        )
        status = case(
            (activity.c.paused, "interrupted"),
            (activity.c.busy, "busy"),
            (latest.c.status == RunState.FAILED.value, "error"),
            else_="idle",
        ).label("status")
        return (
            select(
                threads, activity.c.run_count, first_message, status, latest.c.id, latest.c.status
            )
            .select_from(threads)
            .join(activity, true())
            .outerjoin(latest, true())
        )

    async def _read_summaries(self, query: Select[Any]) -> list[ThreadSummary]:
        async with self.single_statements() as s:
            rows = (await s.execute(query)).all()
        return [
            ThreadSummary(
                row,
                int(count or 0),
                preview or "",
                status,
                (latest_id, latest_status) if latest_id else None,
            )
            for row, count, preview, status, latest_id, latest_status in rows
        ]

    async def thread_summary(self, thread_id: uuid.UUID) -> ThreadSummary | None:
        found = await self._read_summaries(self._summaries().where(ThreadRow.id == thread_id))
        return found[0] if found else None

    @staticmethod
    def threads_query(
        limit: int | None,
        after: tuple[datetime, str] | None,
        order_by: str = "create_time",
        where: ColumnElement[bool] | None = None,
        status: str = "",
    ) -> Select[Any]:
        """list_threads' one statement (the bench compiles it too). Without a status the page's
        threads are picked first (`threads` alone, ordered and cut: a sort of plain columns),
        and only they get their runs read: ordering by `update_time` (no index) had the
        statement read every thread's runs, then sort (600 ms at 10,000 threads). A `busy` or
        `interrupted` filter narrows the threads to those with an active run, read through the
        runs' partial indexes (`uq_runs_active_thread`, `ix_runs_waiting`: a few rows however
        many threads there are), then the status CASE decides. `idle` and `error` (any thread
        may have them) read the threads' runs in page order until the page is full: the walk
        stops there, but a rare one of them still reads every thread's runs."""
        key, _, direction = order_by.partition(" ")
        column = ThreadRow.update_time if key == "update_time" else ThreadRow.create_time
        descending = direction == "desc"
        order = (column.desc(), ThreadRow.id.desc()) if descending else (column, ThreadRow.id)
        conditions = [] if where is None else [where]
        if after:
            when, last = after[0], uuid.UUID(after[1])
            if descending:
                conditions.append(or_(column < when, and_(column == when, ThreadRow.id < last)))
            else:
                conditions.append(or_(column > when, and_(column == when, ThreadRow.id > last)))
        if status in _ACTIVE_THREAD_STATUSES:
            conditions.append(ThreadRow.id.in_(_active_threads()))
        if status in _ACTIVE_THREAD_STATUSES:
            query = Store._summaries().where(*conditions).order_by(*order).limit(limit)
            return query.where(query.selected_columns.status == status)
        if status:
            # The threads in page order (a subquery with ORDER BY is not flattened: its rows
            # reach the LATERALs in that order), so the walk stops once the page is full.
            walk = aliased(
                ThreadRow, select(ThreadRow).where(*conditions).order_by(*order).subquery("walk")
            )
            key_column = walk.update_time if key == "update_time" else walk.create_time
            walk_order = (
                (key_column.desc(), walk.id.desc()) if descending else (key_column, walk.id)
            )
            query = Store._summaries_of(walk).order_by(*walk_order).limit(limit)
            return query.where(query.selected_columns.status == status)
        query = Store._summaries().order_by(*order).limit(limit)
        page = select(ThreadRow.id).where(*conditions).order_by(*order).limit(limit)
        return query.where(ThreadRow.id.in_(page.correlate(None)))

    async def list_threads(
        self,
        limit: int,
        after: tuple[datetime, str] | None,
        order_by: str = "create_time",
        where: ColumnElement[bool] | None = None,
        status: str = "",
    ) -> list[ThreadSummary]:
        """Threads in `order_by` (one of THREAD_ORDERS), with their run count, preview, status
        and newest run; only those `where` holds for (ListThreads' metadata filter) and with
        `status` (one of THREAD_STATUSES), when given."""
        return await self._read_summaries(self.threads_query(limit, after, order_by, where, status))

    async def count_threads(
        self, where: ColumnElement[bool] | None = None, status: str = ""
    ) -> int:
        """How many threads list_threads lists with these filters, over all its pages. Without a
        status a count of the threads' rows; with one, of the same statement's rows (a status
        needs each thread's runs: `busy`/`interrupted` only of the threads with an active run)."""
        if status:
            listed = self.threads_query(None, None, "create_time", where, status).order_by(None)
            query = select(func.count()).select_from(listed.subquery())
        else:
            query = select(func.count()).select_from(ThreadRow)
            if where is not None:
                query = query.where(where)
        async with self.single_statements() as s:
            return int(await s.scalar(query) or 0)

    async def active_run(self, thread_id: uuid.UUID) -> RunRow | None:
        """The thread's queued, running or paused run (at most one), if any."""
        async with self.single_statements() as s:
            return await s.scalar(
                select(RunRow)
                .where(RunRow.thread_id == thread_id, RunRow.status.in_(ACTIVE_STATES))
                .limit(1)
            )

    async def delete_thread(self, thread_id: uuid.UUID) -> bool:
        async with self.sessions() as s, s.begin():
            result = await s.execute(delete(ThreadRow).where(ThreadRow.id == thread_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # runs: API side -------------------------------------------------------------------------

    async def run_by_request_id(self, request_id: str) -> RunRow | None:
        async with self.single_statements() as s:
            return await s.scalar(select(RunRow).where(RunRow.request_id == request_id))

    async def create_run(
        self,
        row: RunRow,
        new_thread: bool,
        before_commit: Callable[[], Awaitable[None]] | None = None,
        claimed: dict[str, Any] | None = None,
    ) -> RunRow:
        """Insert the run (and its new thread); `ActiveRunError` when the thread is busy.
        With `claimed` (an eager start's claim: status, attempt, pick-ups, worker, start), the
        run is recorded claimed, and the row as recorded is returned (`row` is not changed).

        `before_commit` (queueing the run) runs inside the transaction: if it raises, nothing
        is recorded, so a run is never stored without being queued. A worker given the job
        before the commit waits for it with `wait_until_recorded` (the transaction holds the
        run's recording lock).
        """
        # One statement before the queueing: the recording lock, the run and its thread (new,
        # or its update_time), as Core (the ORM's unit of work cost more CPU than the
        # statements, on the way to the run's first token). Each statement was a round trip.
        columns, params = _recording_params(row, new_thread)
        if claimed:
            columns = tuple(dict.fromkeys((*columns, *claimed)))
            params.update({f"run_{key}": value for key, value in claimed.items()})
        statement = _recording_driver(columns, new_thread)
        try:
            async with pgdriver.connection(self.engine) as pg, pg.transaction():
                if not new_thread:
                    # An interrupt/rollback (`create_behind`) cancels the thread's run and
                    # records its own waiting behind it in one transaction: a recording
                    # statement whose snapshot predates that commit would see neither and be
                    # admitted ahead of it. Waiting for the thread's row first gives the
                    # statement a snapshot that sees the waiting run (and refuses).
                    await _LOCK_THREAD.execute(pg, {"thread_id": row.thread_id})
                status = await statement.execute(pg, params)
                if status.endswith(" 0"):
                    raise ActiveRunError  # runs wait on the thread (`multitask`)
                if before_commit is not None:
                    await before_commit()
        except asyncpg.IntegrityConstraintViolationError as exc:
            if getattr(exc, "constraint_name", None) == "uq_runs_active_thread":
                raise ActiveRunError from exc
            # As SQLAlchemy raised it (a request_id taken meanwhile: the servicer looks it up).
            raise IntegrityError(statement.sql, None, exc) from exc
        if claimed:
            return _run_row({c.key: getattr(row, c.key) for c in _RUNS.c} | claimed) or row
        return row

    async def wait_until_recorded(self, run_id: uuid.UUID, timeout_seconds: float) -> bool:
        """Wait until no CreateRun transaction is still recording `run_id` (it committed or
        rolled back); False when one still was after `timeout_seconds`."""
        # One statement on its own (implicit) transaction: the timeout set for it alone, then
        # the shared lock, taken and released with it (was BEGIN, SET LOCAL, the lock, COMMIT).
        try:
            async with self.autocommit.connect() as conn:
                await conn.execute(
                    _WAIT_RECORDED,
                    {
                        "timeout": f"{max(int(timeout_seconds * 1000), 1)}ms",
                        "space": RECORDING_LOCK_SPACE,
                        "key": recording_key(run_id),
                    },
                )
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                return False
            raise
        return True

    async def get_run(self, run_id: uuid.UUID) -> RunRow | None:
        async with pgdriver.connection(self.engine) as pg:
            return await _read_run(pg, run_id)

    async def _transition(
        self,
        run_id: uuid.UUID,
        statement: DriverStatement,
        params: dict[str, Any],
        attempt: int | None = None,
    ) -> tuple[RunRow | None, bool]:
        """Take the transition `statement` says (`_transition_statement`) with `params` if the
        run's status allows it: (row after, whether it changed). The UPDATE is one statement,
        atomic on its own. With `attempt` (a worker's fencing token, see `locks`), only while
        the run is still at that attempt: `LockLostError` when another pick-up has claimed it
        since."""
        async with pgdriver.connection(self.engine) as pg:
            changed = await statement.fetchrow(pg, {"run_id": run_id, "fence": attempt, **params})
            if changed is not None:
                return _run_row(changed), True
            after = await _read_run(pg, run_id)
        if attempt is not None and after is not None and after.attempt != attempt:
            raise LockLostError(f"runs/{run_id} was taken over: attempt {after.attempt}")
        return after, False

    async def cancel(self, run_id: uuid.UUID, reason: str) -> tuple[RunRow | None, bool]:
        return await self._transition(run_id, _CANCEL, {"error": reason, "end_time": now()})

    async def keep_partial(self, run_id: uuid.UUID, output: dict[str, Any]) -> RunRow | None:
        """A cancelled run's output: the text it streamed before its worker stopped it
        (`partial`); the run after it, None if it is not a cancelled run."""
        async with self.autocommit.connect() as conn:
            kept = (
                await conn.execute(
                    update(_RUNS)
                    .where(_RUNS.c.id == run_id, _RUNS.c.status == RunState.CANCELLED.value)
                    .values(output=output)
                    .returning(*_RUNS.c)
                )
            ).first()
        return _run_row(kept) if kept is not None else None

    async def resume(
        self, run_id: uuid.UUID, answer: Any, queue: str, request_id: str = ""
    ) -> tuple[RunRow | None, bool]:
        """PAUSED → QUEUED with the answer, to be queued on `queue` (a fresh pick-up budget)."""
        request = {"request_id": request_id, "answer": answer} if request_id else None
        return await self._transition(
            run_id,
            _RESUME,
            {"answer": answer, "resume_request": request, "queue": queue, "now": now()},
        )

    # runs: worker side ----------------------------------------------------------------------

    async def give_back_pickup(self, run_id: uuid.UUID, attempt: int) -> None:
        """A pick-up that stopped because PostgreSQL or NATS could not be reached is not one of
        the run's RUN_MAX_ATTEMPTS: only pick-ups a worker did not come back from (it died, or
        froze and was taken over) count toward giving up (a run never fails for an outage).
        Only while the run is still at that pick-up's attempt (`locks`' fencing token)."""
        async with self.autocommit.connect() as conn:
            await conn.execute(
                update(_RUNS)
                .where(
                    _RUNS.c.id == run_id,
                    _RUNS.c.attempt == attempt,
                    _RUNS.c.pickups > 0,
                    _RUNS.c.status.in_((RunState.QUEUED.value, RunState.RUNNING.value)),
                )
                .values(pickups=_RUNS.c.pickups - 1)
            )

    async def claim(self, run_id: uuid.UUID, worker: str) -> tuple[RunRow | None, bool]:
        """QUEUED/RUNNING → RUNNING with the attempt and pick-up counted; else the run as it is.
        A run queued behind its thread's run (`multitask`) is never claimed."""
        return await self._transition(run_id, _CLAIM, {"now": now(), "worker": worker})

    @staticmethod
    def claimed_by_lock(found: Any) -> tuple[RunRow | None, bool]:
        """`claim`'s answer from the claim a worker's lock made in its statement
        (`RunLock.take_claim`: the runs table's columns, and `claimed`)."""
        if found["id"] is None:
            return None, False
        return _run_row({column.key: found[column.key] for column in _RUNS.c}), bool(
            found["claimed"]
        )

    async def add_usage(
        self,
        run_id: uuid.UUID,
        input_tokens: int,
        output_tokens: int,
        open_change: tuple[int, int] = (0, 0),
        attempt: int = 0,
    ) -> None:
        """Add a pick-up's model calls to the run, and `open_change` (input, output) to the
        tokens of its nodes not finished yet — to those counted interrupted when the run is no
        longer at `attempt` (another pick-up has it)."""
        async with pgdriver.connection(self.engine) as pg:
            await _ADD_USAGE.execute(
                pg,
                {
                    "run_id": run_id,
                    "added_input": input_tokens,
                    "added_output": output_tokens,
                    "open_input": open_change[0],
                    "open_output": open_change[1],
                    "attempt": attempt,
                },
            )

    async def count_interrupted(self, run_id: uuid.UUID, attempt: int) -> None:
        """At pick-up `attempt`'s start: what the nodes an earlier pick-up left unfinished
        used is counted as interrupted (`RunRow.interrupted_*`)."""
        async with pgdriver.connection(self.engine) as pg:
            await _COUNT_INTERRUPTED.execute(pg, {"run_id": run_id, "attempt": attempt})

    async def finish(
        self,
        run_id: uuid.UUID,
        status: RunState,
        *,
        output: dict[str, Any] | None = None,
        error: str = "",
        usage: tuple[int, int] = (0, 0),
        attempt: int | None = None,
    ) -> tuple[RunRow | None, bool]:
        """RUNNING → COMPLETED/FAILED; a run cancelled meanwhile stays CANCELLED. `usage`
        (input, output tokens) is added to the run's in the same statement — or, when the
        run had ended already, on its own before it is read. `attempt`: see `_transition`."""
        after, changed = await self._transition(
            run_id,
            _ENDS[status],
            {
                "output": output,
                "error": error,
                "end_time": now(),
                "added_input": usage[0],
                "added_output": usage[1],
            },
            attempt,
        )
        if not changed and after is not None and usage != (0, 0):
            await self.add_usage(run_id, *usage)
            after = await self.get_run(run_id)
        return after, changed

    async def pause(
        self, run_id: uuid.UUID, interrupt: dict[str, Any], attempt: int | None = None
    ) -> tuple[RunRow | None, bool]:
        return await self._transition(run_id, _PAUSE, {"interrupt": interrupt}, attempt)

    async def set_terminal_sequence(self, run_id: uuid.UUID, sequence: int) -> bool:
        """Keep the sequence of the run's end event; whether its thread has runs waiting behind
        it or rolled back to delete (`multitask.settle`), read in the same statement."""
        async with pgdriver.connection(self.engine) as pg:
            unsettled = await _TERMINAL_SEQUENCE.fetchval(
                pg, {"run_id": run_id, "sequence": sequence}
            )
        return bool(unsettled)

    async def set_question_sequence(self, row: RunRow, sequence: int) -> None:
        """Keep the sequence of the PAUSED `row`'s `run.interrupted` (nothing if it has been
        answered or paused on another question since)."""
        async with pgdriver.connection(self.engine) as pg:
            await _QUESTION_SEQUENCE.execute(
                pg, {"run_id": row.id, "interrupt": row.interrupt, "sequence": sequence}
            )

    async def status(self, run_id: uuid.UUID) -> str | None:
        async with self.single_statements() as s:
            return await s.scalar(select(RunRow.status).where(RunRow.id == run_id))

    # runs: the reconciler -------------------------------------------------------------------

    async def unfinished_runs(
        self, queue: str, queued_before: datetime, limit: int = 1000
    ) -> list[uuid.UUID]:
        """QUEUED or RUNNING runs of `queue` last queued before `queued_before`, oldest first."""
        queued = func.coalesce(RunRow.queued_time, RunRow.create_time)
        query = (
            select(RunRow.id)
            .where(
                RunRow.status.in_([RunState.QUEUED.value, RunState.RUNNING.value]),
                or_(RunRow.queue == queue, RunRow.queue.is_(None)),
                queued < queued_before,
                RunRow.queued_behind.is_(None),  # a run waiting behind another has no job yet
            )
            .order_by(queued)
            .limit(limit)
        )
        async with self.single_statements() as s:
            return list((await s.scalars(query)).all())

    async def requeued(self, run_id: uuid.UUID, queue: str) -> None:
        """Note that the reconciler put a new job for the run on `queue`."""
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(RunRow).where(RunRow.id == run_id).values(queue=queue, queued_time=now())
            )

    # runs: multitask strategies (`multitask`) ----------------------------------------------

    async def create_behind(
        self, row: RunRow, stop_reason: str | None, rollback: bool
    ) -> tuple[list[RunRow], bool] | None:
        """Record `row` QUEUED behind the thread's run (`queued_behind`; no job: it gets one
        when admitted, `multitask.settle`): its admitted active run, else its first waiting
        one, else its latest started run (ended, but its worker may still be stopping it). With
        `stop_reason`, in the same transaction, every other active run of the thread is
        CANCELLED with it (`rollback`: marked to be deleted). The cancelled runs and whether the
        run it is behind is active; None when the thread never started a run and has none
        active (record `row` as any run).

        The thread's row is locked first (CreateRuns on a thread are taken one at a time), then
        the run it goes behind, so that run's end (an UPDATE of its row) comes after this commit
        and sees `row` waiting; a run that ended meanwhile is read as ended."""
        tid = row.thread_id
        runs = _RUNS.c
        async with self.engine.begin() as conn:
            threads = ThreadRow.__table__
            await conn.execute(select(threads.c.id).where(threads.c.id == tid).with_for_update())
            active = and_(runs.thread_id == tid, runs.status.in_(_ACTIVE_VALUES))
            ahead = await conn.scalar(
                select(runs.id)
                .where(active)
                .order_by(runs.queued_behind.is_not(None), runs.create_time, runs.id)
                .limit(1)
                .with_for_update()
            )
            ahead_active = ahead is not None
            if ahead is None:
                ahead = await conn.scalar(
                    select(runs.id)
                    .where(runs.thread_id == tid, runs.start_time.is_not(None))
                    .order_by(runs.start_time.desc())
                    .limit(1)
                )
            if ahead is None:
                return None
            row.queued_behind = ahead
            await conn.execute(*_recording_insert(row, False))
            if stop_reason is None:
                return [], ahead_active
            stopped = await conn.execute(
                update(_RUNS)
                .where(active, runs.id != row.id)
                .values(
                    status=RunState.CANCELLED.value,
                    error=stop_reason,
                    end_time=now(),
                    interrupt=None,
                    has_resume=False,
                    rolled_back=rollback,
                )
                .returning(*_RUNS.c)
            )
            return [RunRow(**found._mapping) for found in stopped.all()], ahead_active

    async def thread_turn(self, thread_id: uuid.UUID) -> ThreadTurn:
        """The thread's `ThreadTurn`, in one statement."""
        latest = (
            select(_RUNS.c.id, _RUNS.c.status)
            .where(_RUNS.c.thread_id == thread_id, _RUNS.c.start_time.is_not(None))
            .order_by(_RUNS.c.start_time.desc())
            .limit(1)
            .subquery()
        )
        busy = exists().where(
            _RUNS.c.thread_id == thread_id,
            _RUNS.c.status.in_(_ACTIVE_VALUES),
            _RUNS.c.queued_behind.is_(None),
        )
        query = select(
            select(latest.c.id).scalar_subquery(),
            select(latest.c.status).scalar_subquery(),
            busy,
        )
        async with self.autocommit.connect() as conn:
            found = (await conn.execute(query)).one()
        return ThreadTurn(found[0], found[1], bool(found[2]))

    async def admit_next(self, thread_id: uuid.UUID, queue: str) -> uuid.UUID | None:
        """Admit the thread's first waiting run if the thread has no admitted active run: the
        run admitted (queue its job), None if none was."""
        try:
            async with self.autocommit.connect() as conn:
                changed = (
                    await conn.execute(_ADMIT, {"thread": thread_id, "now": now(), "queue": queue})
                ).all()
        except IntegrityError as exc:
            if "uq_runs_active_thread" in str(exc.orig):
                return None  # another run was admitted (or recorded) meanwhile
            raise
        return next((found.id for found in changed if found.admitted), None)

    async def rolled_back(self, thread_id: uuid.UUID) -> list[uuid.UUID]:
        """The thread's ended runs a rollback stopped, not deleted yet."""
        async with self.autocommit.connect() as conn:
            found = await conn.scalars(
                select(_RUNS.c.id).where(
                    _RUNS.c.thread_id == thread_id,
                    _RUNS.c.rolled_back,
                    _RUNS.c.status.in_(_ENDED_VALUES),
                )
            )
            return list(found.all())

    async def unsettled_threads(self, limit: int = 1000) -> list[uuid.UUID]:
        """Threads with runs waiting while none of theirs is admitted and active (the run they
        waited for ended and its end did not admit the next: its worker was killed in between),
        or with rolled back runs not deleted yet: for the reconciler."""
        admitted = _RUNS.alias("admitted")
        stalled = and_(
            _RUNS.c.status == RunState.QUEUED.value,
            _RUNS.c.queued_behind.is_not(None),
            ~exists().where(
                admitted.c.thread_id == _RUNS.c.thread_id,
                admitted.c.status.in_(_ACTIVE_VALUES),
                admitted.c.queued_behind.is_(None),
            ),
        )
        leftover = and_(_RUNS.c.rolled_back, _RUNS.c.status.in_(_ENDED_VALUES))
        query = select(_RUNS.c.thread_id).where(or_(stalled, leftover)).distinct().limit(limit)
        async with self.autocommit.connect() as conn:
            return list((await conn.scalars(query)).all())

    async def delete_ended_run(self, run_id: uuid.UUID) -> RunRow | None:
        """Delete the run if it has ended (COMPLETED, FAILED or CANCELLED): None when it was
        deleted, else the run as it is (a status the caller names), NotFound as None too —
        callers read it first. One conditional DELETE: a run resumed or re-queued meanwhile is
        not deleted."""
        async with self.autocommit.connect() as conn:
            gone = await conn.scalar(
                delete(_RUNS)
                .where(_RUNS.c.id == run_id, _RUNS.c.status.in_(_ENDED_VALUES))
                .returning(_RUNS.c.id)
            )
        if gone is not None:
            return None
        return await self.get_run(run_id)

    async def delete_runs(self, run_ids: Sequence[uuid.UUID]) -> None:
        async with self.autocommit.connect() as conn:
            await conn.execute(delete(_RUNS).where(_RUNS.c.id.in_(run_ids)))

    # runs: the gauges of /metrics -----------------------------------------------------------

    async def unfinished_counts(self) -> tuple[list[tuple[str, str, int]], float]:
        """(status, workflow or 'agent', count) of QUEUED/RUNNING/PAUSED runs, and the age in
        seconds of the oldest QUEUED run that waits for a worker (0 when none does; one waiting
        behind its thread's run, `multitask`, does not count)."""
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")  # two reads, no BEGIN
            counts = (
                await conn.execute(
                    text(
                        "SELECT status, coalesce(workflow, 'agent'), count(*) FROM runs "
                        "WHERE status IN ('QUEUED', 'RUNNING', 'PAUSED') GROUP BY 1, 2"
                    )
                )
            ).all()
            oldest = (
                await conn.execute(
                    text(
                        "SELECT extract(epoch FROM now() - min(create_time)) FROM runs "
                        "WHERE status = 'QUEUED' AND queued_behind IS NULL"
                    )
                )
            ).scalar()
        return [(str(s), str(w), int(c)) for s, w, c in counts], float(oldest or 0.0)
