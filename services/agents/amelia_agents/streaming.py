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
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar, cast

import nats.errors

from amelia.v1 import agents_pb2, events_pb2
from amelia_agents.convert import run_name
from amelia_agents.lifecycle import TERMINAL_TYPES
from amelia_agents.models import TERMINAL_STATES, RunRow
from amelia_agents.runfeed import Follower, RunFeed
from amelia_agents.store import Store
from amelia_agents.waiting import RunWaits
from amelia_common.errors import StreamEndedError
from amelia_common.eventlog import EventLog, EventLogUnavailableError, EventReader, StartAt
from amelia_common.settings import Settings

# StreamRun's and CreateAndStreamRun's responses: the same event fields.
Response = TypeVar("Response", agents_pb2.StreamRunResponse, agents_pb2.CreateAndStreamRunResponse)

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


class RunStreamer:
    def __init__(self, settings: Settings, store: Store, event_log: EventLog) -> None:
        self.settings = settings
        self.store = store
        self.event_log = event_log
        self.feed = RunFeed(event_log, settings.EVENTS_PUBLISH_TIMEOUT_SECONDS)
        # WaitRun's calls, woken by the same feed.
        self.waits = RunWaits(store, self.feed)

    async def close(self) -> None:
        """Stop the run feed's reader (at shutdown)."""
        await self.feed.close()

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
        self,
        row: RunRow,
        request: agents_pb2.StreamRunRequest,
        message: type[Response],
        follower: Follower | None = None,
    ) -> AsyncIterator[Response]:
        """StreamRun's messages: one event each, or (`max_events_per_message` > 1) the events
        that arrived together, at most that many per message, as `message`s (CreateAndStreamRun's
        carry the same fields). `follower`: the call's share of the feed, joined before the run
        was recorded (`EarlyFollower`)."""
        per_message = min(request.max_events_per_message, EVENTS_PER_MESSAGE)
        async for batch in self.stream(row, request.after_sequence, follower):
            if per_message <= 1:
                for event in batch:
                    yield message(event=event)
            else:
                for start in range(0, len(batch), per_message):
                    yield message(events=batch[start : start + per_message])

    async def stream(
        self, row: RunRow, after_sequence: int, follower: Follower | None = None
    ) -> AsyncIterator[list[events_pb2.Event]]:
        """The run's events after `after_sequence` in order, in the batches they arrived in;
        OUT_OF_RANGE for a sequence beyond the log's end (`EventLog.check_resume_point`), which
        would otherwise be waited past in silence, the run's events meanwhile never sent."""
        known = row.terminal_sequence is not None and after_sequence <= row.terminal_sequence
        if after_sequence > 0 and not known:
            try:
                await self.event_log.check_resume_point(after_sequence)
            except nats.errors.Error as exc:
                raise EventLogUnavailableError(f"cannot read the event log's end: {exc!r}") from exc
        if (
            row.status in TERMINAL_STATES
            and row.terminal_sequence is not None
            and after_sequence >= row.terminal_sequence
        ):
            async for page in self._after_end(row, after_sequence):
                yield page
            return
        source = (
            _FeedSource(self.feed, follower, row.id)
            if follower is not None
            else await self._source(row, after_sequence)
        )
        last = after_sequence
        idle_checks = 0
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation
                    # that arrives as the item does, and the stream would outlive its client.
                    async with asyncio.timeout(IDLE_CHECK_SECONDS):
                        batch = await source.next_batch()
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
                except _UnreadableError as exc:
                    raise self._ended(str(exc), last) from None
                idle_checks = 0
                if batch is None:
                    # Left the feed (fell behind, or the feed stopped): on with a reader of its
                    # own, after the last event given.
                    await source.close()
                    source = _ReaderSource(self._reader(row, last, follow=True))
                    continue
                end = _terminal_index(batch)
                if end is None:
                    last = batch[-1].sequence
                    yield batch
                    continue
                # What follows the end is read as it is now (the same as joining later),
                # unless the log says that nothing follows it.
                yield batch[: end + 1]
                if end == len(batch) - 1 and await source.nothing_after(batch[end].sequence):
                    return
                async for page in self._after_end(row, batch[end].sequence):
                    yield page
                return
        finally:
            await source.close()

    async def _source(self, row: RunRow, after_sequence: int) -> _Source:
        """Where a call's events come from. A finished run (a replay) is read by a reader of its
        own. A running one joins the process's run feed, its catch-up queued first: read from
        the log one by one when it is at most CATCH_UP_EVENTS, else by a reader of its own that
        ends once caught up (`_CatchUpSource`), so no call keeps a consumer of its own for its
        run's life (each is one of the stream's bounded consumers)."""
        if row.status in TERMINAL_STATES:
            return _ReaderSource(self._reader(row, after_sequence, follow=True))
        try:
            follower = await self.feed.follow(row.id)
        except EventLogUnavailableError as exc:
            raise self._ended(f"could not be read: {exc}", after_sequence) from None
        if follower is None:  # the service is stopping
            return _ReaderSource(self._reader(row, after_sequence, follow=True))
        follower.after = max(after_sequence, follower.position)
        feed = _FeedSource(self.feed, follower, row.id)
        try:
            history = await self.feed.history(row.id, after_sequence, follower.position)
        except (nats.errors.Error, TimeoutError):
            history = None  # the catch-up's reader says whether NATS is away
        if history is None:
            return _CatchUpSource(
                _ReaderSource(self._reader(row, after_sequence, follow=False), caught_up=True),
                feed,
            )
        follower.queue.extendleft(reversed(history))
        if history:
            follower.wake.set()
        return feed

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


class EarlyFollower:
    """CreateAndStreamRun's share of the run feed, joined before its run is recorded: every
    event of the run is stored after the feed's position then, so there is nothing in the log
    to catch up on (StreamRun's `history` read). NATS not answering raises
    `EventLogUnavailableError` before anything is recorded, as the job's publish would."""

    def __init__(self, streamer: RunStreamer) -> None:
        self.streamer = streamer
        self.follower: Follower | None = None

    async def join(self, row: RunRow) -> None:
        self.follower = await self.streamer.feed.follow(row.id)

    def of(self, name: str) -> Follower | None:
        """The follower, if it follows the run `name` (not a request_id's earlier run)."""
        follower = self.follower
        return follower if follower is not None and follower.subject == name else None

    def leave(self) -> None:
        if self.follower is not None:
            self.follower.leave()
            self.follower = None


class _UnreadableError(Exception):
    """The event log could not be read (the message says why)."""


class _FeedSource:
    """A call's events from the process's run feed."""

    def __init__(self, feed: RunFeed, follower: Follower, run_id: uuid.UUID) -> None:
        self.feed = feed
        self.follower = follower
        self.run_id = run_id

    async def next_batch(self) -> list[events_pb2.Event] | None:
        """The next events; None once the call left the feed (read on from the log)."""
        return await self.follower.next_batch(EVENTS_PER_MESSAGE, MESSAGE_BYTES)

    async def nothing_after(self, sequence: int) -> bool:
        if self.follower.queue:
            return False
        if self.feed.quiet_after(sequence):
            return True  # as JetStream said delivering it, as a reader of its own would know
        try:
            return not await self.feed.any_after(self.run_id, sequence)
        except (nats.errors.Error, TimeoutError):
            return False  # read after the end, which says what it finds

    async def close(self) -> None:
        self.follower.leave()


class _ReaderSource:
    """A call's events from a reader of its own, read ahead by a task: a stream waiting for
    them can be cancelled (the client went away, the idle check) without losing any.
    `caught_up`: the reader reads history only (`follow=False`), and its end is the catch-up's
    end (`next_batch` gives None), not a stream ended."""

    def __init__(self, reader: EventReader, *, caught_up: bool = False) -> None:
        self.reader = reader
        self.caught_up = caught_up
        self.inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async with self.reader:
                while True:
                    await self.inbox.put(
                        await self.reader.next_batch(
                            EVENTS_PER_MESSAGE, MESSAGE_BYTES, LIVE_HOLD_SECONDS
                        )
                    )
        except StopAsyncIteration:
            await self.inbox.put(None if self.caught_up else _UnreadableError("ended the stream"))
        except Exception as exc:  # noqa: BLE001 - NATS could not be reached: said by the call
            await self.inbox.put(_UnreadableError(f"could not be read: {exc}"))

    async def next_batch(self) -> list[events_pb2.Event] | None:
        """The next events; None once a `caught_up` reader has read the log to its end."""
        item = await self.inbox.get()
        if isinstance(item, _UnreadableError):
            raise item
        return cast("list[events_pb2.Event] | None", item)

    async def nothing_after(self, sequence: int) -> bool:
        return self.reader.pending == 0

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


class _CatchUpSource:
    """A call with more of its run to catch up on than CATCH_UP_EVENTS: a reader of its own
    reads the log to its end as it is then, and the call goes on with the run feed, which has
    queued every event of the run after the feed's position when the call joined — joined
    before the reader opened, so no event falls between them; those the reader already gave
    are dropped. The reader's consumer lasts the catch-up, not the run: a consumer for each
    dashboard or client following a long run filled the stream's consumers (1000)."""

    def __init__(self, reader: _ReaderSource, feed: _FeedSource) -> None:
        self.reader: _ReaderSource | None = reader
        self.feed = feed
        self.last = 0  # the last sequence the reader gave
        # The caught-up reader's close, in a task of its own: a cancelled wait for the next
        # batch (the idle check) does not cut it short.
        self.closing: asyncio.Task[None] | None = None

    async def next_batch(self) -> list[events_pb2.Event] | None:
        while self.reader is not None:
            batch = await self.reader.next_batch()
            if batch is not None:
                self.last = batch[-1].sequence
                return batch
            reader, self.reader = self.reader, None
            self.closing = asyncio.create_task(reader.close())
        while (batch := await self.feed.next_batch()) is not None:
            fresh = [event for event in batch if event.sequence > self.last]
            if fresh:
                return fresh
        return None  # the call left the feed: on from the log after its last event

    async def nothing_after(self, sequence: int) -> bool:
        return self.reader is None and await self.feed.nothing_after(sequence)

    async def close(self) -> None:
        if self.reader is not None:
            await self.reader.close()
        if self.closing is not None:
            await self.closing
        await self.feed.close()


_Source = _FeedSource | _ReaderSource | _CatchUpSource


def _terminal_index(batch: list[events_pb2.Event]) -> int | None:
    """Where the run's end is in `batch`, if it is there."""
    for index, event in enumerate(batch):
        if event.type in TERMINAL_TYPES:
            return index
    return None
