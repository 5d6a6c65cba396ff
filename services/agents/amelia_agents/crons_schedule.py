"""A cron's schedule: a 5-field cron expression read in a time zone, its arithmetic done by
`croniter` (a maintained library, as LangGraph Server's crons use), not by a parser of ours.

Times in and out are UTC-aware datetimes; the zone only says which wall clock the fields mean
(`0 9 * * *` in `Europe/Paris` is 08:00 UTC in winter, 07:00 UTC in summer).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from amelia_common.errors import InvalidArgumentError

FIELDS = "minute hour day-of-month month day-of-week"
# Missed ticks counted after downtime at most (a minute schedule down for a week is 10080).
MAX_COUNTED = 100_000


@dataclass(frozen=True)
class Schedule:
    expression: str
    zone: ZoneInfo

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after `moment` (UTC)."""
        found: datetime = croniter(self.expression, moment.astimezone(self.zone)).get_next(datetime)
        return found.astimezone(UTC)

    def catch_up(self, due: datetime, moment: datetime) -> tuple[datetime, int]:
        """The latest tick at or before `moment`, from `due` (a tick, at or before `moment`) on,
        and how many ticks before it were missed (Temporal's catch-up with a buffer of one: the
        latest fires, the others are counted)."""
        ticks = croniter(self.expression, due.astimezone(self.zone))
        latest, missed = due, 0
        while missed < MAX_COUNTED:
            following: datetime = ticks.get_next(datetime)
            if following > moment:
                break
            latest, missed = following.astimezone(UTC), missed + 1
        return latest, missed


def parse(expression: str, timezone: str, field: str = "cron") -> Schedule:
    """The schedule, or INVALID_ARGUMENT naming `<field>.schedule` / `<field>.timezone` and what is
    wrong with it."""
    zone = _zone(timezone, f"{field}.timezone")
    text = " ".join(expression.split())
    count = len(text.split())
    if count != 5:
        raise InvalidArgumentError(
            f"{field}.schedule {expression!r} must have 5 fields ({FIELDS}), e.g. '*/15 * * * *'; "
            f"it has {count}"
        )
    try:
        schedule = Schedule(text, zone)
        schedule.next_after(datetime.now(UTC))
    except CroniterBadDateError:
        raise InvalidArgumentError(
            f"{field}.schedule {text!r} never fires (no date matches its day and month fields)"
        ) from None
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        raise InvalidArgumentError(
            f"{field}.schedule {text!r} is not a valid cron expression ({FIELDS}): {exc}"
        ) from None
    return schedule


def _zone(timezone: str, field: str) -> ZoneInfo:
    if not timezone:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgumentError(
            f"{field} {timezone!r} is not an IANA time zone (e.g. 'Europe/Paris', 'UTC')"
        ) from None


def first_tick(schedule: Schedule, moment: datetime, end_time: datetime | None) -> datetime | None:
    """The next tick after `moment`, or None when the schedule has ended by then."""
    found = schedule.next_after(moment)
    return None if end_time is not None and found >= end_time else found


def before(end_time: datetime) -> datetime:
    """The last moment a tick may fire before `end_time` (ticks are whole minutes)."""
    return end_time - timedelta(seconds=1)
