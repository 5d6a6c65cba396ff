"""The agents service's tables: agents, threads and runs.

LangGraph's checkpoints live in the checkpointer's own tables (keyed by thread id); these tables
hold what the API shows. A run keeps a snapshot of its agent's configuration, so editing or
deleting the agent never changes a run that is already queued.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now_column() -> Mapped[datetime]:
    """A time column PostgreSQL sets to now when the row is inserted."""
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class Base(DeclarativeBase):
    pass


class RunState(enum.StrEnum):
    """A run's status as stored (names match `amelia.v1.RunStatus` without the prefix)."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


ACTIVE_STATES = (RunState.QUEUED, RunState.RUNNING, RunState.PAUSED)
TERMINAL_STATES = (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED)


class AgentRow(Base):
    __tablename__ = "agents"
    __table_args__ = (Index("ix_agents_create_time", "create_time", "id"),)

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(Text)
    temperature: Mapped[float] = mapped_column(Double)
    max_tokens: Mapped[int] = mapped_column(Integer)
    timeout_seconds: Mapped[float] = mapped_column(Double)
    retry_attempts: Mapped[int] = mapped_column(Integer)
    context_sources: Mapped[list[str]] = mapped_column(JSONB, default=list)
    tools: Mapped[list[str]] = mapped_column(JSONB, default=list)
    create_time: Mapped[datetime] = now_column()
    update_time: Mapped[datetime] = now_column()


class ThreadRow(Base):
    __tablename__ = "threads"
    __table_args__ = (Index("ix_threads_create_time", "create_time", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    create_time: Mapped[datetime] = now_column()
    update_time: Mapped[datetime] = now_column()


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_create_time", "create_time", "id"),
        Index("ix_runs_thread", "thread_id"),
        Index("ix_runs_agent", "agent_id"),
        # One admitted active run per thread: runs in a thread share one checkpoint history.
        # Runs queued behind it (multitask enqueue/interrupt/rollback) wait outside the index.
        Index(
            "uq_runs_active_thread",
            "thread_id",
            unique=True,
            postgresql_where=text(
                "status IN ('QUEUED', 'RUNNING', 'PAUSED') AND queued_behind IS NULL"
            ),
        ),
        # A thread's waiting runs, first come first admitted.
        Index(
            "ix_runs_waiting",
            "thread_id",
            "create_time",
            postgresql_where=text("status = 'QUEUED' AND queued_behind IS NOT NULL"),
        ),
        # Runs a rollback stopped, to be deleted with their checkpoints.
        Index("ix_runs_rolled_back", "thread_id", postgresql_where=text("rolled_back")),
        # What the reconciler looks through for runs whose job was lost.
        Index(
            "ix_runs_unfinished",
            "queue",
            postgresql_where=text("status IN ('QUEUED', 'RUNNING')"),
        ),
        # Webhooks owed (`webhooks`): runs whose end is still to be POSTed.
        Index(
            "ix_runs_webhooks_owed",
            "queue",
            "webhook_due",
            postgresql_where=text("webhook_state = 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    agent_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    workflow: Mapped[str | None] = mapped_column(String(63), nullable=True)
    thread_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("threads.id", ondelete="CASCADE")
    )
    # JSON null (not SQL NULL): a run created without input, continuing its thread.
    input: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=dict, nullable=False)
    agent_config: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=RunState.QUEUED.value)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime] = now_column()
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # Of those, the calls of nodes the pick-up running now has not finished (their usage leaves
    # these once a node's writes are stored); a later pick-up moves what is left to
    # `interrupted_*`: calls of nodes an interrupted pick-up did not finish, run again since.
    # (Defaults in the database only: CreateRun's statement, compiled once, leaves them out.)
    open_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    open_output_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    interrupted_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    interrupted_output_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    interrupt: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    # The answer ResumeRun gave, consumed by the next worker that picks the run up.
    has_resume: Mapped[bool] = mapped_column(Boolean, default=False)
    resume_value: Mapped[Any] = mapped_column(JSONB, nullable=True)
    # {"request_id", "answer"} of the last ResumeRun sent with a request_id: its retry gets the
    # run back (kept after the answer is consumed, unlike resume_value).
    resume_request: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    timeout_seconds: Mapped[float | None] = mapped_column(Double, nullable=True)
    request_id: Mapped[str | None] = mapped_column(Text, nullable=True, unique=True)
    # What made the run, when it was made with a request_id (`servicer.request_origin`): a retry
    # with that id must be the same request (migration agents_0012; NULL before it).
    request_origin: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str] = mapped_column(Text, default="")
    # Sequence of the run's terminal event, once it is in the log.
    terminal_sequence: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The work queue (stream) its jobs go to, and when it was last put there (created, answered
    # or re-queued by the reconciler); NULL for runs older than these columns.
    queue: Mapped[str | None] = mapped_column(Text, nullable=True)
    queued_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Pick-ups since it was last queued by the API: RUN_MAX_ATTEMPTS bounds them. (`attempt`
    # counts every pick-up of the run's life, answers included.)
    pickups: Mapped[int] = mapped_column(Integer, default=0)
    # Multitask strategies (`multitask`): how the run was created on a busy thread (NULL:
    # reject); the thread's run it waits for while QUEUED behind it (NULL once admitted: only
    # then does it get a job); stopped by a rollback: deleted with its checkpoints at its end.
    multitask_strategy: Mapped[str | None] = mapped_column(Text, nullable=True)
    queued_behind: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    rolled_back: Mapped[bool] = mapped_column(Boolean, default=False)
    # The URL POSTed when the run pauses and when it ends (`webhooks`): "pending" until the
    # end's is delivered or failed, the POSTs made of the delivery due, and when the next may
    # be made (NULL: once the run's question or end is in the log).
    webhook: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_state: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    webhook_due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A pause is told too (migration agents_0010): the sequence of the PAUSED run's
    # `run.interrupted` once it is in the log, that of the last pause whose delivery settled,
    # and the delivery `webhook_attempts` counts (a pause's question_sequence; 0: the end's).
    question_sequence: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    webhook_paused_told: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    webhook_attempts_for: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
