"""A cron's schedule: a 5-field cron expression read in a time zone, its arithmetic done by
`croniter` (a maintained library, as LangGraph Server's crons use), not by a parser of ours.

Only plain cron is accepted (`_check_fields`): per field a `,` list of `*`, a number or a name
(`jan`…`dec`, `sun`…`sat`), a range `a-b`, each with an optional step `/n` no larger than the
field's span. croniter's extensions (`H` hashes, `?`, `L`, `#`, `W`, 6 or 7 fields) are refused
before croniter sees them, so its internal messages never reach a person.

Times in and out are UTC-aware datetimes; the zone only says which wall clock the fields mean
(`0 9 * * *` in `Europe/Paris` is 08:00 UTC in winter, 07:00 UTC in summer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from amelia_common.errors import InvalidArgumentError

FIELDS = "minute hour day-of-month month day-of-week"
# Each field: its name, lowest and highest value, and the names it accepts (as numbers).
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
FIELD_RANGES: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {name: number for number, name in enumerate(MONTHS, 1)}),
    ("day-of-week", 0, 7, {name: number for number, name in enumerate(DAYS)}),
)
ITEM = re.compile(
    r"^(?:(?P<star>\*)|(?P<low>[0-9a-z]+)(?:-(?P<high>[0-9a-z]+))?)(?:/(?P<step>[0-9]+))?$",
    re.IGNORECASE,
)
PLAIN = "numbers, names (jan, mon), '*', ',' lists, '-' ranges and '/' steps"
# Missed ticks counted after downtime at most (a minute schedule down for a week is 10080).
MAX_COUNTED = 100_000
# The longest schedule and time zone taken (a schedule listing every minute is 170 characters;
# the longest IANA zone name, 32), and how much of a longer one an error quotes.
MAX_SCHEDULE_CHARS = 256
MAX_TIMEZONE_CHARS = 64
SHOWN_CHARS = 40


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
    if len(expression) > MAX_SCHEDULE_CHARS:
        raise InvalidArgumentError(
            f"{field}.schedule {_shown(expression)} is longer than {MAX_SCHEDULE_CHARS} "
            "characters: use ranges and steps ('1-30/2') instead of long lists"
        )
    text = " ".join(expression.split())
    count = len(text.split())
    if count != 5:
        raise InvalidArgumentError(
            f"{field}.schedule {expression!r} must have 5 fields ({FIELDS}), e.g. '*/15 * * * *'; "
            f"it has {count}"
        )
    bad = _check_fields(text.split())
    if bad:
        raise InvalidArgumentError(
            f"{field}.schedule {text!r} is not a valid cron expression ({FIELDS}): {bad}"
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


def _check_fields(fields: list[str]) -> str:
    """What is wrong with the 5 fields as plain cron ("" when nothing)."""
    for value, (name, lowest, highest, names) in zip(fields, FIELD_RANGES, strict=True):
        for item in value.split(","):
            found = ITEM.match(item)
            if found is None:
                return f"the {name} field's {item!r} is not plain cron ({PLAIN})"
            ends = [end for end in (found["low"], found["high"]) if end]
            numbers = [names.get(end.lower(), int(end) if end.isdigit() else -1) for end in ends]
            for end, number in zip(ends, numbers, strict=True):
                if not lowest <= number <= highest:
                    kind = "number or name" if names else "number"
                    return f"the {name} field's {end!r} is not a {kind} in {lowest}-{highest}"
            span = numbers[1] - numbers[0] if len(numbers) == 2 else highest - lowest
            if span < 0:
                return f"the {name} field's range {item!r} runs backwards"
            if found["step"] and len(numbers) == 1:
                return f"the {name} field's step in {item!r} needs '*' or a range ('*/n', 'a-b/n')"
            if found["step"] and not 1 <= int(found["step"]) <= span:
                return f"the {name} field's step in {item!r} is not in 1-{span}"
    return ""


def _zone(timezone: str, field: str) -> ZoneInfo:
    if not timezone:
        return ZoneInfo("UTC")
    not_a_zone = InvalidArgumentError(
        f"{field} {_shown(timezone)} is not an IANA time zone (e.g. 'Europe/Paris', 'UTC')"
    )
    if len(timezone) > MAX_TIMEZONE_CHARS:
        raise not_a_zone
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name the disk refuses
        raise not_a_zone from None


def _shown(value: str) -> str:
    """A refused value as an error quotes it: whole when short, else its start and length."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}… ({len(value)} characters)"


def first_tick(schedule: Schedule, moment: datetime, end_time: datetime | None) -> datetime | None:
    """The next tick after `moment`, or None when the schedule has ended by then."""
    found = schedule.next_after(moment)
    return None if end_time is not None and found >= end_time else found


def before(end_time: datetime) -> datetime:
    """The last moment a tick may fire before `end_time` (ticks are whole minutes)."""
    return end_time - timedelta(seconds=1)
