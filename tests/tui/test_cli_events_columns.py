"""`amelia events` at 80 columns: every row's subject starts in one column, the longest event
type (`run.webhook.delivered`) included (QA: it overran the type column and its row was
shifted two characters right of the others)."""

from __future__ import annotations

from amelia_cli.tui.eventline import event_line

RUN = "runs/0f0e4c1a-5b8e-4a61-9d51-3f1f6f0d2a77"
TYPES = ("run.created", "run.completed", "run.webhook.failed", "run.webhook.delivered")


def test_each_rows_subject_starts_in_the_same_column_at_80_columns() -> None:
    lines = [
        event_line(
            {"sequence": 1200 + i, "type": kind, "subject": RUN, "time": "2026-12-03T17:40:00Z"},
            80,
        )
        for i, kind in enumerate(TYPES)
    ]
    assert all(len(line) <= 80 for line in lines), lines
    starts = {line.index("runs/") for line in lines}
    assert len(starts) == 1, "\n".join(lines)
    for kind, line in zip(TYPES, lines, strict=True):
        assert f" {kind} " in line  # the type whole, a space before the subject
