"""`amelia crons ls|get` at 80 columns: a cron's name stays whole (to copy into `pause`,
`trigger`, `rm`), its schedule and state beside it, the target left for wider terminals; `get`
reads as lines, then the recent ticks with what became of each."""

from __future__ import annotations

import datetime as dt
import io

from rich.console import Console

from amelia.v1 import crons_pb2
from amelia_cli.client import listing
from amelia_cli.commands.crons import CRON_COLUMNS, cron_row, show, until

NOW = dt.datetime(2026, 12, 3, 8, 0, 30, tzinfo=dt.UTC)
NAME = "crons/5f0c3a52-3b8e-4f7a-9f55-0d4b2e6c7a11"
FIRED = crons_pb2.CRON_OUTCOME_FIRED


def _stamp(minutes: float) -> dt.datetime:
    return NOW + dt.timedelta(minutes=minutes)


def _cron(**fields: object) -> crons_pb2.Cron:
    cron = crons_pb2.Cron(
        name=NAME,
        agent="agents/researcher-with-a-rather-long-identifier-name",
        schedule="*/15 9-17 * * 1-5",
        timezone="America/Argentina/Buenos_Aires",
        fired_count=12,
        skipped_count=2,
        failed_count=1,
        **fields,  # type: ignore[arg-type]
    )
    cron.next_run_time.FromDatetime(_stamp(14.5))
    cron.input.update({"message": "summarise the overnight alerts"})
    return cron


def _lines(print_to: object) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    print_to(console)  # type: ignore[operator]
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    return lines


def _tick(cron: crons_pb2.Cron, outcome: int, minutes: float, run: str = "") -> None:
    action = cron.recent_actions.add(outcome=outcome, run=run)
    action.schedule_time.FromDatetime(_stamp(minutes))


def test_crons_ls_at_80_columns_keeps_names_whole_with_the_next_run_and_last_ticks() -> None:
    active = _cron()
    for minutes, outcome in ((-1, FIRED), (-16, crons_pb2.CRON_OUTCOME_SKIPPED), (-31, FIRED)):
        _tick(active, outcome, minutes)
    _tick(active, FIRED, -46)  # a fourth: `crons get` shows it, not `ls`
    paused = _cron(paused=True)
    paused.ClearField("next_run_time")
    ended = _cron(ended=True)
    ended.ClearField("next_run_time")
    _tick(ended, FIRED, -60 * 24 * 3)
    yearly = _cron()
    yearly.schedule = "0 0 1 1 *"
    yearly.next_run_time.FromDatetime(_stamp(60 * 24 * 40))
    rows = [cron_row(c, NOW) for c in (active, paused, ended, yearly)]
    lines = _lines(lambda console: listing(console, CRON_COLUMNS, rows))
    shown = "\n".join(lines)
    assert sum(NAME in line for line in lines) == 4, shown
    assert "target" not in lines[0], shown  # optional: `amelia crons get` names it
    first = lines.index(next(line for line in lines if NAME in line))
    assert "in 14m" in lines[first] and "fired 1m" in lines[first], shown
    assert "skipped 16m" in lines[first + 1] and "fired 31m" in lines[first + 2], shown
    assert "46m" not in shown, shown
    assert sum("paused" in line for line in lines) == 1, shown
    assert sum(" ended " in line for line in lines) == 1 and "fired 3d" in shown, shown
    assert "2027-01-12" in shown, shown  # a month away: the date, whole
    column = len(NAME) + 3  # the schedule's, folded (not cut) in what is left
    folded = "".join(line[column:].split()[0] for line in lines[first:] if line[column:].strip())
    assert "a/Buenos_Aires" in folded, shown


def test_crons_get_shows_counts_and_recent_ticks() -> None:
    cron = _cron()
    fired = cron.recent_actions.add(
        outcome=crons_pb2.CRON_OUTCOME_FIRED,
        run="runs/0b9f2a4e-9c61-4a57-8d1e-7c2f0e3b5a99",
        missed_ticks=95,
    )
    fired.schedule_time.FromDatetime(_stamp(-1))
    skipped = cron.recent_actions.add(
        outcome=crons_pb2.CRON_OUTCOME_SKIPPED,
        reason="threads/6f1d… already has a running run, runs/2c4e…; a thread runs one at a time",
    )
    skipped.schedule_time.FromDatetime(_stamp(-16))
    queued = cron.recent_actions.add(
        outcome=FIRED,
        run="runs/7d3e1c2b-1a4f-4e0a-9b7e-2f6a8c9d0e11",
        reason="queued behind runs/0b9f2a4e-9c61-4a57-8d1e-7c2f0e3b5a99",
    )
    queued.schedule_time.FromDatetime(_stamp(-31))
    cron.multitask_strategy = "enqueue"
    lines = _lines(lambda console: show(cron, console, NOW))
    shown = "\n".join(lines)
    assert lines[0] == NAME
    assert "enqueue: the run waits for the thread's run" in shown, shown
    assert "(queued behind runs/0b9f2a4e-9c61-4a57-8d1e-7c2f0e3b5a99)" in " ".join(shown.split()), (
        shown
    )
    assert "12 fired, 2 skipped (thread busy), 1 failed" in shown, shown
    assert "a new one for each run" in shown, shown
    assert "(in 14m)" in shown, shown
    words = shown.split()
    assert "runs/0b9f2a4e-9c61-4a57-8d1e-7c2f0e3b5a99" in words, shown  # whole, to copy
    assert "(95 missed ticks before it)" in " ".join(words), shown
    assert "skipped" in words and "1m ago" in shown and "16m ago" in shown, shown


def test_until_says_how_soon() -> None:
    stamp = crons_pb2.Cron().next_run_time
    stamp.FromDatetime(_stamp(90))
    assert until(stamp, NOW) == "in 1h"
    stamp.FromDatetime(_stamp(-1))
    assert until(stamp, NOW) == "now"
