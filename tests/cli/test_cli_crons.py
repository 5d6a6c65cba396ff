"""`amelia crons ls|get` at 80 columns: a cron's id stays whole (to copy into `pause`,
`trigger`, `rm`), its schedule, state and target beside it, the last ticks left for `get` and
wider terminals; `get` reads as lines, then the recent ticks with what became of each."""

from __future__ import annotations

import datetime as dt
import io
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from amelia.v1 import crons_pb2
from amelia_cli.client import listing
from amelia_cli.commands.crons import CRON_COLUMNS, cron_row, show, until
from amelia_cli.main import app

NOW = dt.datetime(2026, 12, 3, 8, 0, 30, tzinfo=dt.UTC)
NAME = "crons/5f0c3a52-3b8e-4f7a-9f55-0d4b2e6c7a11"
FIRED = crons_pb2.CRON_OUTCOME_FIRED
AGENT = "researcher-with-a-rather-long-identifier-name"


def _stamp(minutes: float) -> dt.datetime:
    return NOW + dt.timedelta(minutes=minutes)


def _cron(**fields: object) -> crons_pb2.Cron:
    cron = crons_pb2.Cron(
        name=NAME,
        agent=f"agents/{AGENT}",
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


def _lines(print_to: object, width: int = 80) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    print_to(console)  # type: ignore[operator]
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    return lines


def _tick(cron: crons_pb2.Cron, outcome: int, minutes: float, run: str = "") -> None:
    action = cron.recent_actions.add(outcome=outcome, run=run)
    action.schedule_time.FromDatetime(_stamp(minutes))


def _listed(width: int) -> list[str]:
    """`crons ls` of an active cron with four ticks, a paused one, an ended one, a yearly one
    and one paused after its end (all of a long-named agent), and a workflow's, `width` wide."""
    active = _cron()
    for minutes, outcome in ((-1, FIRED), (-16, crons_pb2.CRON_OUTCOME_SKIPPED), (-31, FIRED)):
        _tick(active, outcome, minutes)
    _tick(active, FIRED, -46)  # a fourth: `crons get` shows it, not `ls`
    paused = _cron(paused=True)
    paused.ClearField("next_run_time")
    ended = _cron(ended=True)
    ended.ClearField("next_run_time")
    _tick(ended, FIRED, -60 * 24 * 3)
    ended_paused = _cron(ended=True, paused=True)  # paused after its end: both facts
    ended_paused.ClearField("next_run_time")
    yearly = _cron()
    yearly.schedule = "0 0 1 1 *"
    yearly.next_run_time.FromDatetime(_stamp(60 * 24 * 40))
    echo = _cron()
    echo.workflow, echo.timezone = "workflows/echo", ""
    crons = (active, paused, ended, yearly, ended_paused, echo)
    rows = [cron_row(c, NOW) for c in crons]
    return _lines(lambda console: listing(console, CRON_COLUMNS, rows), width)


def _cell(lines: list[str], name: str, row: int, column: str, until: str = "") -> str:
    """The cell of the `row`th row naming `name` in `column` (found by where its header starts),
    its folded lines joined."""
    at = {word: lines[0].index(word) for word in lines[0].split()}
    rows = [i for i, line in enumerate(lines) if name in line] + [len(lines)]
    end = at[until] if until else None
    return "".join(line[at[column] : end].strip() for line in lines[rows[row] : rows[row + 1]])


def test_crons_ls_at_80_columns_keeps_ids_whole_with_the_next_run_and_the_target() -> None:
    """QA: at 80 columns the target (what the cron runs: what tells one cron from another)
    was dropped for the last ticks; now the ticks are left to `crons get`."""
    lines = _listed(80)
    shown = "\n".join(lines)
    cron_id = NAME.removeprefix("crons/")  # every crons command takes the id alone
    assert sum(cron_id in line for line in lines) == 6, shown
    assert lines[0].split() == ["cron", "schedule", "next", "target"], shown
    first = lines.index(next(line for line in lines if cron_id in line))
    assert "in 14m" in lines[first], shown
    assert "fired" not in shown and "skipped" not in shown, shown  # (`crons get` lists them)
    assert sum(" ended " in line for line in lines) == 2, shown
    last_agent = [i for i, line in enumerate(lines) if cron_id in line][-2]  # paused after its
    assert " ended " in lines[last_agent] and " paused " in lines[last_agent + 1], shown  # end
    assert sum(" paused " in line for line in lines) == 2, shown
    assert "2027-01-12" in shown, shown  # a month away: the date, whole
    # Named as `crons create` takes them: an agent's id, a workflow's name.
    assert _cell(lines, cron_id, 0, "target") == AGENT, shown
    assert _cell(lines, cron_id, 5, "target") == "echo", shown
    assert "a/Buenos_Aires" in _cell(lines, cron_id, 0, "schedule", until="next"), shown


def test_crons_ls_on_a_wide_terminal_adds_the_last_ticks_and_full_names() -> None:
    lines = _listed(160)
    shown = "\n".join(lines)
    assert lines[0].split() == ["cron", "schedule", "next", "last", "(ago)", "target"], shown
    assert sum(NAME in line for line in lines) == 6, shown
    first = lines.index(next(line for line in lines if NAME in line))
    assert "in 14m" in lines[first] and "fired 1m" in lines[first], shown
    assert "skipped 16m" in lines[first + 1] and "fired 31m" in lines[first + 2], shown
    assert "46m" not in shown and "fired 3d" in shown, shown
    assert _cell(lines, NAME, 0, "target") == "agents/" + AGENT, shown
    assert _cell(lines, NAME, 5, "target") == "workflows/echo", shown


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
        missed_ticks=1,
    )
    queued.schedule_time.FromDatetime(_stamp(-31))
    cron.multitask_strategy = "enqueue"
    cron.thread = "threads/9a1c2e3f-4b5d-4e6f-8a7b-0c1d2e3f4a5b"
    cron.metadata.update({"team": "ops"})
    lines = _lines(lambda console: show(cron, console, NOW))
    shown = "\n".join(lines)
    assert lines[0] == NAME
    assert "enqueue: the run waits for the thread's run" in shown, shown
    assert "(queued behind runs/0b9f2a4e-9c61-4a57-8d1e-7c2f0e3b5a99)" in " ".join(shown.split()), (
        shown
    )
    assert "12 fired, 2 skipped (thread busy), 1 failed" in shown, shown
    assert '{"team": "ops"}' in shown, shown
    assert "(in 14m)" in shown, shown
    words = shown.split()
    assert "runs/0b9f2a4e-9c61-4a57-8d1e-7c2f0e3b5a99" in words, shown  # whole, to copy
    assert "(95 missed ticks before it)" in " ".join(words), shown
    assert "(1 missed tick before it)" in " ".join(words), shown  # QA s22: "1 missed ticks"
    assert "skipped" in words and "1m ago" in shown and "16m ago" in shown, shown


def test_until_says_how_soon() -> None:
    stamp = crons_pb2.Cron().next_run_time
    stamp.FromDatetime(_stamp(90))
    assert until(stamp, NOW) == "in 1h"
    stamp.FromDatetime(_stamp(-1))
    assert until(stamp, NOW) == "now"


def test_crons_get_says_a_cron_without_a_thread_is_never_busy() -> None:
    """Each tick's run has a new thread: no strategy applies (the service refuses one)."""
    cron = _cron(multitask_strategy="reject")
    cron.paused, cron.ended = True, True
    cron.ClearField("next_run_time")
    shown = "\n".join(_lines(lambda console: show(cron, console, NOW)))
    assert "a new one for each run" in shown, shown
    assert "a new thread each tick: never busy" in shown and "reject" not in shown, shown
    assert re.search(r"state +ended · paused", shown), shown


@pytest.mark.parametrize(
    "end",
    ["2026-12-03T14:03:00+25:00", "tomorrow", "2026-13-03T14:03"],
)
def test_a_bad_end_is_refused_with_the_forms_accepted(end: str) -> None:
    """Before any call to the service: the same words from create and update."""
    for args in (["create", "fast", "* * * * *"], ["update", "crons/x"]):
        result = CliRunner().invoke(
            app, ["crons", *args, "--end", end], env={"COLUMNS": "80"}, terminal_width=80
        )
        said = " ".join(re.sub(r"[│╭╮╰╯─]|\x1b\[[0-9;]*m", " ", result.output).split())
        assert result.exit_code == 2, result.output
        assert f"Invalid value for --end: '{end}' is not an ISO time, e.g." in said, said
        assert "2026-12-03T14:03+01:00 (offset under 24h)" in said, said
        assert "timedelta" not in said and "isoformat" not in said, said


def test_a_crons_input_is_echoed_as_typed() -> None:
    """QA s26: `amelia crons create … -m '✓ done'` echoed `"\\u2713 done"`."""
    cron = crons_pb2.Cron(name="crons/c1", workflow="workflows/chat", schedule="0 9 * * *")
    cron.input.update({"message": "✓ done — ça va"})
    cron.metadata.update({"owner": "zoë"})
    shown = "\n".join(_lines(lambda console: show(cron, console, NOW)))
    assert '{"message": "✓ done — ça va"}' in shown, shown
    assert '{"owner": "zoë"}' in shown and "\\u" not in shown, shown
