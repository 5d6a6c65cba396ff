"""The `crons` table and its statements: what the API changes, and the scheduler's claim.

A tick is claimed with one conditional UPDATE (`next_run_time` moves on only where it still holds
the due tick and no tick is pending), which also records the claimed tick as *pending*; the tick
stops being pending only when its outcome is recorded (`record`). A scheduler that dies between
the two leaves the tick pending, and any scheduler retakes it once it has been pending for the
lease (`stale` + `retake`): the run's request id (`cron:<id>:<tick>`) makes creating it again
return the run already made, so a tick is never lost and never runs twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    and_,
    delete,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from amelia_agents.models import Base, now_column
from amelia_agents.store import now

RECENT_ACTIONS = 10  # kept on a cron, newest first
COUNTERS = {"FIRED": "fired_count", "SKIPPED": "skipped_count", "FAILED": "failed_count"}


class CronRow(Base):
    __tablename__ = "crons"
    __table_args__ = (
        Index("ix_crons_create_time", "create_time", "id"),
        Index("ix_crons_due", "next_run_time", postgresql_where=text("next_run_time IS NOT NULL")),
        Index(
            "ix_crons_pending", "pending_since", postgresql_where=text("pending_tick IS NOT NULL")
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    agent_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    workflow: Mapped[str | None] = mapped_column(String(63), nullable=True)
    thread_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("threads.id", ondelete="CASCADE"), nullable=True
    )
    schedule: Mapped[str] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(Text, default="")
    input: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # What a tick does on a busy thread: the CreateRun's multitask strategy (migration 0006).
    multitask_strategy: Mapped[str] = mapped_column(Text, default="reject")
    # Each run's webhook (`run.webhook`), or NULL for none (migration 0008).
    webhook: Mapped[str | None] = mapped_column(Text, nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The next tick to fire; NULL while paused or once the schedule has ended.
    next_run_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A claimed tick whose outcome is not recorded yet, since when, and the ticks it folds in.
    pending_tick: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    pending_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    pending_missed: Mapped[int] = mapped_column(Integer, default=0)
    last_run: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    recent: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    fired_count: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped_count: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_count: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time: Mapped[datetime] = now_column()
    update_time: Mapped[datetime] = now_column()


@dataclass
class Action:
    """One tick's outcome, as kept in `recent` and `last_run` (JSON) and told in events."""

    schedule_time: datetime
    outcome: str  # a key of COUNTERS
    run: str = ""
    reason: str = ""
    missed_ticks: int = 0
    triggered: bool = False
    action_time: datetime = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {
            "schedule_time": self.schedule_time.isoformat(),
            "action_time": self.action_time.isoformat(),
            "outcome": self.outcome,
            "run": self.run,
            "reason": self.reason,
            "missed_ticks": self.missed_ticks,
            "triggered": self.triggered,
        }


class CronStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    # the API --------------------------------------------------------------------------------

    async def create(self, row: CronRow) -> CronRow:
        async with self.sessions() as s, s.begin():
            s.add(row)
        return row

    async def get(self, cron_id: uuid.UUID) -> CronRow | None:
        async with self.sessions() as s:
            return await s.get(CronRow, cron_id)

    async def page(
        self,
        limit: int,
        after: tuple[datetime, str] | None,
        agent_id: str | None,
        thread_id: uuid.UUID | None,
        workflow: str | None = None,
    ) -> list[CronRow]:
        query = select(CronRow).order_by(CronRow.create_time, CronRow.id).limit(limit)
        if after:
            query = query.where(
                or_(
                    CronRow.create_time > after[0],
                    and_(CronRow.create_time == after[0], CronRow.id > uuid.UUID(after[1])),
                )
            )
        if agent_id is not None:
            query = query.where(CronRow.agent_id == agent_id)
        if thread_id is not None:
            query = query.where(CronRow.thread_id == thread_id)
        if workflow is not None:
            query = query.where(CronRow.workflow == workflow)
        async with self.sessions() as s:
            return list((await s.scalars(query)).all())

    async def update(self, cron_id: uuid.UUID, change: Callable[[CronRow], None]) -> CronRow | None:
        """Apply `change` to the cron under its row lock (a scheduler's claim waits, then finds
        the tick it read gone if `change` moved it)."""
        async with self.sessions() as s, s.begin():
            row = await s.get(CronRow, cron_id, with_for_update=True)
            if row is None:
                return None
            change(row)
            row.update_time = now()
        return row

    async def delete(self, cron_id: uuid.UUID) -> bool:
        async with self.sessions() as s, s.begin():
            result = await s.execute(delete(CronRow).where(CronRow.id == cron_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # the scheduler --------------------------------------------------------------------------

    async def due(self, moment: datetime, limit: int) -> list[CronRow]:
        """Crons whose next tick is at or before `moment` and not claimed yet, earliest first."""
        query = (
            select(CronRow)
            .where(
                CronRow.next_run_time <= moment,
                CronRow.pending_tick.is_(None),
                CronRow.paused.is_(False),
            )
            .order_by(CronRow.next_run_time)
            .limit(limit)
        )
        async with self.sessions() as s:
            return list((await s.scalars(query)).all())

    async def claim(
        self,
        seen: CronRow,
        tick: datetime,
        missed: int,
        following: datetime | None,
        moment: datetime,
    ) -> CronRow | None:
        """Take the cron's due tick as `seen` (firing as `tick`, `missed` folded in) and move the
        cron on to `following`, in one statement: of schedulers racing on it, one gets the row.
        None also when the cron was changed since it was read (`update_time`): `tick` and
        `following` were worked out from its old schedule and end, the next pass reads it anew."""
        statement = (
            update(CronRow)
            .where(
                CronRow.id == seen.id,
                CronRow.next_run_time == seen.next_run_time,
                CronRow.update_time == seen.update_time,
                CronRow.pending_tick.is_(None),
                CronRow.paused.is_(False),
            )
            .values(
                next_run_time=following,
                pending_tick=tick,
                pending_since=moment,
                pending_missed=missed,
            )
            .returning(CronRow)
        )
        return await self._one(statement)

    async def stale(self, cutoff: datetime, limit: int) -> list[CronRow]:
        """Crons with a tick pending since before `cutoff`: its scheduler died or gave up."""
        query = (
            select(CronRow)
            .where(CronRow.pending_tick.is_not(None), CronRow.pending_since < cutoff)
            .order_by(CronRow.pending_since)
            .limit(limit)
        )
        async with self.sessions() as s:
            return list((await s.scalars(query)).all())

    async def retake(self, row: CronRow, moment: datetime) -> CronRow | None:
        """Take over `row`'s pending tick (one of the schedulers racing for it gets it)."""
        statement = (
            update(CronRow)
            .where(
                CronRow.id == row.id,
                CronRow.pending_tick == row.pending_tick,
                CronRow.pending_since == row.pending_since,
            )
            .values(pending_since=moment)
            .returning(CronRow)
        )
        return await self._one(statement)

    async def _one(self, statement: Any) -> CronRow | None:
        async with self.sessions() as s, s.begin():
            found: CronRow | None = (await s.execute(statement)).scalar_one_or_none()
        return found

    async def record(
        self, cron_id: uuid.UUID, action: Action, pending: datetime | None
    ) -> CronRow | None:
        """Record `action` on the cron: for a scheduled tick (`pending`, the claimed tick) only
        while that tick is still pending, which it stops being; a trigger's only once per run.
        None when there was nothing to record (the cron is gone, or another scheduler recorded
        the tick)."""
        async with self.sessions() as s, s.begin():
            row = await s.get(CronRow, cron_id, with_for_update=True)
            if row is None:
                return None
            if pending is not None:
                if row.pending_tick != pending:
                    return None
                row.pending_tick = row.pending_since = None
                row.pending_missed = 0
            elif action.run and any(a.get("run") == action.run for a in row.recent or []):
                return row  # a retried trigger: its run is already recorded
            kept = action.to_json()
            row.recent = [kept, *(row.recent or [])][:RECENT_ACTIONS]
            if action.outcome == "FIRED":
                row.last_run = kept
            counter = COUNTERS[action.outcome]
            setattr(row, counter, getattr(row, counter) + 1)
        return row
