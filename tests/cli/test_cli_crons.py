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


def test_crons_ls_at_80_columns_keeps_names_whole() -> None:
    paused = _cron(paused=True)
    paused.ClearField("next_run_time")
    rows = [cron_row(_cron(), NOW), cron_row(paused, NOW)]
    lines = _lines(lambda console: listing(console, CRON_COLUMNS, rows))
    shown = "\n".join(lines)
    assert sum(NAME in line for line in lines) == 2, shown
    assert "target" not in lines[0], shown  # optional: `amelia crons get` names it
    first = next(line for line in lines if NAME in line)
    assert "active" in first and "in 14m" in first, shown
    assert sum("paused" in line for line in lines) == 1, shown
    assert "Buenos_Aires" in shown.replace("\n", ""), shown  # folded, not cut


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
    lines = _lines(lambda console: show(cron, console, NOW))
    shown = "\n".join(lines)
    assert lines[0] == NAME
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
