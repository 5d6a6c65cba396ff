"""The text a run streamed before it was stopped (a timeout, a cancel), kept on the run.

A run that times out or is cancelled mid-answer has its tokens only in the event log, and its
output would be empty although the user watched the text stream (LangGraph Server keeps an
interrupted run's partial state too). When a pick-up is stopped, the executor reads the run's
`run.token` events back from the log and stores their text as the run's `output.partial`.

Read back rather than gathered while the graph runs: the run path (every token) stays as it
is, and the log holds exactly what clients were shown — every pick-up's tokens, in order (a
worker that died mid-node leaves its tokens in the log, and so in the partial text, as the
clients saw them). The events are read after the stopped graph unwound and its checkpoints were
stored, so the tokens it wrote to NATS before it stopped are stored by then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from amelia_agents.convert import run_name
from amelia_agents.models import RunRow
from amelia_common.eventlog import EventLog, StartAt, event_data
from amelia_common.logging import get_logger

log = get_logger("amelia.agents.partial")

# The output key a stopped run's streamed text is kept under.
PARTIAL_KEY = "partial"
# How long reading the log back may take before the run ends without its partial text.
READ_SECONDS = 10.0
# Tokens are stored after the run was created; a margin for the two clocks (PostgreSQL's, NATS's).
CLOCK_MARGIN = dt.timedelta(seconds=60)


async def streamed_text(event_log: EventLog, row: RunRow) -> str:
    """The text of the run's `run.token` events, in order ("" when it streamed none, or when the
    log could not be read in time: the run's end is recorded all the same)."""
    start = StartAt.beginning()
    if row.create_time is not None:
        start = StartAt.at_time(row.create_time - CLOCK_MARGIN)
    parts: list[str] = []
    try:
        async with asyncio.timeout(READ_SECONDS):
            reader = event_log.read(
                ["run.token"], run_name(row.id), start, follow=False, retry_for=READ_SECONDS
            )
            async with reader:
                async for event in reader:
                    text = event_data(event).get("text")
                    if isinstance(text, str):
                        parts.append(text)
    except Exception as exc:  # noqa: BLE001 - the partial text is a courtesy, never the end's cause
        log.warning("cannot read the run's streamed text", run=str(row.id), error=repr(exc))
        return ""
    return "".join(parts)


def partial_output(text: str) -> dict[str, Any] | None:
    """A stopped run's output: its streamed text, or none when it streamed nothing."""
    return {PARTIAL_KEY: text} if text else None
