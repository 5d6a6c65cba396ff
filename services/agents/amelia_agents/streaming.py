"""StreamRun: a run's events from the event log — replay, then live, until the run ends.

The agents service reads the run's events from JetStream itself, with the event log's own
reader (`EventLog.read`, subject `runs/<uuid>`): the reader the events service's StreamEvents
uses, so replay and live delivery behave the same — in stream-sequence order, from
`after_sequence`, no gap and no duplicate across a NATS restart (a new consumer after the last
event seen). The log stays the one truth: every event comes back from JetStream with its
sequence, whoever published it. Read here rather than relayed by the events service, a token
makes one hop less on its way to the client (docs/performance.md, session 12), and StreamRun
works while the events service is down. The stream ends after the run's terminal event
(`run.completed|failed|cancelled`) and whatever the run's log holds after it at that moment:
events about the run published after its end — `git.landed` / `git.discarded` when its branch
is landed or discarded later — so joining a finished run (again, `after_sequence` = the last
event seen) shows them, then ends. If the terminal event is not in the log any more (expired),
an idle stream of a finished run ends too.

A client that asks for `max_events_per_message` gets the events the events service sent
together in one message (at most that many; never held back to fill a message): a run's node
is ~10 events, and each gRPC message costs CPU on both sides. Every token is still its own
event, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from amelia.v1 import agents_pb2, events_pb2
from amelia_agents.convert import run_name
from amelia_agents.lifecycle import TERMINAL_TYPES
from amelia_agents.models import TERMINAL_STATES, RunRow
from amelia_agents.store import Store
from amelia_common.errors import StreamEndedError
from amelia_common.eventlog import EventLog, EventLogUnavailableError, EventReader, StartAt
from amelia_common.settings import Settings

IDLE_CHECK_SECONDS = 2.0
# Events read together: what JetStream already delivered comes in one batch (and one StreamRun
# message for a client that asks for batches), at most this many ...
EVENTS_PER_MESSAGE = 256
# ... and no more once they add up to this (one event always fits): under the 4 MiB gRPC
# clients accept by default, as the events service's StreamEvents messages.
MESSAGE_BYTES = 1024 * 1024
# A batch that would start less than this after the previous one while events keep arriving
# faster than they are sent waits for the rest (`EventReader.next_batch`'s hold, as the
# events service's StreamEvents): no event waits longer, and one with nothing behind it not at all.
LIVE_HOLD_SECONDS = 0.002
_DONE = object()


class RunStreamer:
    def __init__(self, settings: Settings, store: Store, event_log: EventLog) -> None:
        self.settings = settings
        self.store = store
        self.event_log = event_log

    def _reader(self, row: RunRow, after_sequence: int, *, follow: bool) -> EventReader:
        """A reader of the run's events after `after_sequence`. Opening it waits for NATS at
        most EVENTS_PUBLISH_TIMEOUT_SECONDS (then UNAVAILABLE, saying where to resume); once
        open, it carries the stream across a NATS restart without a gap."""
        return self.event_log.read(
            (),
            run_name(row.id),
            StartAt.after(after_sequence) if after_sequence else StartAt.beginning(),
            follow=follow,
            batch=EVENTS_PER_MESSAGE,
            retry_for=self.settings.EVENTS_PUBLISH_TIMEOUT_SECONDS,
        )

    def _ended(self, detail: str, last: int) -> StreamEndedError:
        return StreamEndedError(
            f"the event log (NATS JetStream at {self.settings.NATS_URL}) {detail}; reconnect "
            f"with after_sequence={last} to continue without a gap"
        )

    async def responses(
        self, row: RunRow, request: agents_pb2.StreamRunRequest
    ) -> AsyncIterator[agents_pb2.StreamRunResponse]:
        """StreamRun's messages: one event each, or (`max_events_per_message` > 1) the events
        that arrived together, at most that many per message."""
        per_message = min(request.max_events_per_message, EVENTS_PER_MESSAGE)
        async for batch in self.stream(row, request.after_sequence):
            if per_message <= 1:
                for event in batch:
                    yield agents_pb2.StreamRunResponse(event=event)
            else:
                for start in range(0, len(batch), per_message):
                    yield agents_pb2.StreamRunResponse(events=batch[start : start + per_message])

    async def stream(
        self, row: RunRow, after_sequence: int
    ) -> AsyncIterator[list[events_pb2.Event]]:
        """The run's events after `after_sequence` in order, in the batches they arrived in."""
        if (
            row.status in TERMINAL_STATES
            and row.terminal_sequence is not None
            and after_sequence >= row.terminal_sequence
        ):
            async for page in self._after_end(row, after_sequence):
                yield page
            return
        log_reader = self._reader(row, after_sequence, follow=True)
        inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)

        async def pump() -> None:
            try:
                async with log_reader:
                    while True:
                        await inbox.put(
                            await log_reader.next_batch(
                                EVENTS_PER_MESSAGE, MESSAGE_BYTES, LIVE_HOLD_SECONDS
                            )
                        )
            except StopAsyncIteration:
                await inbox.put(_DONE)
            except Exception as exc:  # noqa: BLE001 - NATS could not be reached: said below
                await inbox.put(exc)

        reader = asyncio.create_task(pump())
        last = after_sequence
        idle_checks = 0
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation
                    # that arrives as the item does, and the stream would outlive its client.
                    async with asyncio.timeout(IDLE_CHECK_SECONDS):
                        item = await inbox.get()
                except TimeoutError:
                    current = await self.store.get_run(row.id)
                    if (
                        current is not None
                        and current.status in TERMINAL_STATES
                        and current.terminal_sequence is not None
                    ):
                        idle_checks += 1
                        if idle_checks >= 2:
                            return
                    continue
                idle_checks = 0
                if isinstance(item, list):
                    end = _terminal_index(item)
                    if end is None:
                        last = item[-1].sequence
                        yield item
                        continue
                    # What follows the end is read as it is now (the same as joining later),
                    # unless JetStream said, delivering the end, that nothing follows it.
                    yield item[: end + 1]
                    if end == len(item) - 1 and log_reader.pending == 0:
                        return
                    async for page in self._after_end(row, item[end].sequence):
                        yield page
                    return
                detail = "ended the stream" if item is _DONE else f"could not be read: {item}"
                raise self._ended(detail, last)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _after_end(
        self, row: RunRow, after_sequence: int
    ) -> AsyncIterator[list[events_pb2.Event]]:
        """The run's events logged after `after_sequence` (past its end), as they are now: in
        batches."""
        last = after_sequence
        try:
            async with self._reader(row, after_sequence, follow=False) as reader:
                while True:
                    try:
                        batch = await reader.next_batch(EVENTS_PER_MESSAGE, MESSAGE_BYTES)
                    except StopAsyncIteration:
                        return
                    last = batch[-1].sequence
                    yield batch
        except EventLogUnavailableError as exc:
            raise self._ended(f"could not be read: {exc}", last) from None


def _terminal_index(batch: list[events_pb2.Event]) -> int | None:
    """Where the run's end is in `batch`, if it is there."""
    for index, event in enumerate(batch):
        if event.type in TERMINAL_TYPES:
            return index
    return None
