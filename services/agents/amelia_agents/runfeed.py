"""One reader of every run's events for all the StreamRun calls of this process (`RunFeed`).

With a JetStream consumer of its own per call, each StreamRun subscribed, created its consumer,
pulled, and at its end unsubscribed and deleted it: five NATS requests and their replies per
streamed run, in the agents process's one thread (docs/performance.md, session 13). Here one
reader at the live edge of `runs/*` (created on the first call, kept while calls come) hands
each event to the calls following its run. Each call keeps the promises a reader of its own
gave it — every event of the run after its `after_sequence`, in order, each once, the log the
one truth:

- a call registers with the feed (`follow`) at the feed's position P, synchronously: every
  event of the run stored after P is handed to it from then on. What the run's log holds after
  `after_sequence` up to P is read from the log first (`history`: one JetStream "next message on
  this subject" request per event; usually none or a few — a call made as its run starts); more
  than CATCH_UP_EVENTS of them and the call reads them with a reader of its own that ends once
  caught up, the feed's events queued for it meanwhile (`streaming._CatchUpSource`);
- a slow client stalls no one and memory stays bounded: a call's queue holds at most
  QUEUE_EVENTS / QUEUE_BYTES; a call that falls that far behind leaves the feed (`behind`), sends
  what it had queued and goes on with a reader of its own after its last event;
- NATS restarts: the feed's reader recreates its consumer after its last sequence (no gap, no
  duplicate), as any reader; if NATS stays away longer than a reader waits, the feed ends and its
  calls go on with readers of their own, which say UNAVAILABLE as before.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid

import nats.errors
import nats.js.errors

from amelia.v1 import events_pb2
from amelia_agents.convert import run_name
from amelia_common.eventlog import (
    EventLog,
    EventLogUnavailableError,
    EventReader,
    StartAt,
    decode_event,
    filter_subjects,
)
from amelia_common.logging import get_logger

log = get_logger("amelia.agents.runfeed")

# Events of a run a call may have queued and not yet sent before it leaves the feed.
QUEUE_EVENTS = 4096
QUEUE_BYTES = 2 * 1024 * 1024
# At most this many of a run's events are read one by one (`history`) when a call joins; a call
# with more to catch up on reads them with a reader of its own.
CATCH_UP_EVENTS = 16
# The feed's reader stops this long after its last call left (the next call opens it again).
IDLE_SECONDS = 60.0
# Events the feed's reader takes at a time, and at most this many bytes of them.
FEED_BATCH = 256
FEED_BATCH_BYTES = 1024 * 1024
# JetStream's error code for "no message found" (a "next message" request past the last one).
_NO_MESSAGE = 10037


class Follower:
    """One call's share of the feed: the run's events after `position`, in order."""

    def __init__(self, feed: RunFeed, subject: str, position: int) -> None:
        self.feed = feed
        self.subject = subject
        # Every event of the run stored after this sequence is queued here by the feed.
        self.position = position
        self.queue: collections.deque[events_pb2.Event] = collections.deque()
        self.queued_bytes = 0
        self.wake = asyncio.Event()
        # Events up to this sequence the call has (its `after_sequence`): never queued.
        self.after = position
        # Fell behind (or the feed ended): what is queued is sent, then the call reads on its own.
        self.behind = False

    def offer(self, event: events_pb2.Event) -> None:
        if self.behind or event.sequence <= self.after:
            return
        size = event.ByteSize()
        if len(self.queue) >= QUEUE_EVENTS or self.queued_bytes + size > QUEUE_BYTES:
            self.feed.left_behind += 1
            self.leave()
            return
        self.queue.append(event)
        self.queued_bytes += size
        self.wake.set()

    def leave(self) -> None:
        """Stop taking the feed's events (queued ones are still given)."""
        self.behind = True
        self.feed.forget(self)
        self.wake.set()

    async def next_batch(self, limit: int, max_bytes: int) -> list[events_pb2.Event] | None:
        """The queued events (at least one, at most `limit` and about `max_bytes`), waiting for
        one; None once the queue is empty and the call left the feed."""
        while not self.queue:
            if self.behind:
                return None
            self.wake.clear()
            await self.wake.wait()
        batch = [self.queue.popleft()]
        size = batch[0].ByteSize()
        while self.queue and len(batch) < limit and size < max_bytes:
            event = self.queue.popleft()
            batch.append(event)
            size += event.ByteSize()
        self.queued_bytes = max(0, self.queued_bytes - size)
        return batch


class RunFeed:
    """The agents process's reader of `runs/*` at the live edge, shared by its StreamRun calls."""

    def __init__(self, event_log: EventLog, retry_for: float) -> None:
        self.event_log = event_log
        self.retry_for = retry_for
        self.followers: dict[str, set[Follower]] = {}
        # Every run event stored after this sequence reaches the followers registered by then.
        self.position = 0
        self.left_behind = 0  # calls that left the feed because they fell behind
        self._reader: EventReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock = asyncio.Lock()
        self._idle: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def open(self) -> bool:
        return self._task is not None and not self._task.done()

    async def follow(self, run_id: uuid.UUID) -> Follower | None:
        """Register a call following `run_id`: from now on every event of the run stored after
        the returned follower's `position` is queued for it. None once the feed is closed (the
        service stops); `EventLogUnavailableError` when NATS does not answer."""
        if self._closed:
            return None
        if not self.open:
            async with self._opening:
                if not self.open:
                    await self._open()
        follower = Follower(self, run_name(run_id), self.position)
        self.followers.setdefault(follower.subject, set()).add(follower)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        return follower

    def forget(self, follower: Follower) -> None:
        calls = self.followers.get(follower.subject)
        if calls is None:
            return
        calls.discard(follower)
        if not calls:
            del self.followers[follower.subject]
        if not self.followers and self._idle is None and self._reader is not None:
            self._idle = asyncio.create_task(self._close_when_idle())

    async def history(
        self, run_id: uuid.UUID, after: int, upto: int
    ) -> list[events_pb2.Event] | None:
        """The run's events stored after `after` up to `upto`, read from the log one by one;
        None when there are more than CATCH_UP_EVENTS of them. Raises NATS's error."""
        (subject,) = filter_subjects((), run_name(run_id))
        stream = self.event_log.settings.EVENTS_STREAM
        found: list[events_pb2.Event] = []
        sequence = after + 1
        while sequence <= upto:
            if len(found) >= CATCH_UP_EVENTS:
                return None
            try:
                msg = await self.event_log.js.get_msg(
                    stream, seq=sequence, subject=subject, next=True
                )
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code == _NO_MESSAGE:
                    break
                raise
            if msg.seq is None or msg.seq > upto:
                break
            found.append(decode_event(msg.data or b"", msg.seq, msg.subject or ""))
            sequence = msg.seq + 1
        return found

    def quiet_after(self, sequence: int) -> bool:
        """Whether the feed has read past `sequence` and JetStream said, delivering the last
        event read, that no event of any run followed it: then every event of a run stored
        after `sequence` (until that moment) has been handed on."""
        reader = self._reader
        return (
            reader is not None
            and self.position >= sequence
            and reader.pending == 0
            and reader.buffered == 0
        )

    async def any_after(self, run_id: uuid.UUID, sequence: int) -> bool:
        """Whether the log holds an event of the run after `sequence` now. Raises NATS's error."""
        (subject,) = filter_subjects((), run_name(run_id))
        try:
            await self.event_log.js.get_msg(
                self.event_log.settings.EVENTS_STREAM, seq=sequence + 1, subject=subject, next=True
            )
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == _NO_MESSAGE:
                return False
            raise
        return True

    async def close(self) -> None:
        self._closed = True
        await self._stop()

    async def _open(self) -> None:
        """Start reading at the log's end; `EventLogUnavailableError` if NATS does not answer
        in `retry_for` (what a reader of the call's own would have said)."""
        reader: EventReader | None = None
        try:
            async with asyncio.timeout(self.retry_for):
                info = await self.event_log.js.stream_info(self.event_log.settings.EVENTS_STREAM)
                last = int(info.state.last_seq)
                reader = self.event_log.read(
                    (),
                    "runs/*",
                    StartAt.after(last),
                    batch=FEED_BATCH,
                    retry_for=self.retry_for,
                )
                await reader.open()
        except Exception as exc:
            if reader is not None:
                await reader.aclose()  # its consumer, if it made one
            if isinstance(exc, EventLogUnavailableError):
                raise  # the reader's own word
            if isinstance(exc, nats.errors.Error | TimeoutError | OSError):
                raise EventLogUnavailableError(
                    f"cannot read the event log: NATS JetStream did not answer ({exc!r})"
                ) from exc
            raise
        self.position = last
        self._reader = reader
        self._task = asyncio.create_task(self._pump(reader))

    async def _pump(self, reader: EventReader) -> None:
        try:
            async with reader:
                while True:
                    events = await reader.next_batch(FEED_BATCH, FEED_BATCH_BYTES)
                    for event in events:
                        for follower in list(self.followers.get(event.subject, ())):
                            follower.offer(event)
                    self.position = events[-1].sequence
        except StopAsyncIteration:
            pass
        except Exception as exc:  # noqa: BLE001 - NATS away too long: calls read on their own
            log.warning("run feed stopped; its calls read on their own", error=repr(exc))
        finally:
            self._reader = None
            followers = [f for calls in self.followers.values() for f in calls]
            for follower in followers:
                follower.leave()

    async def _close_when_idle(self) -> None:
        await asyncio.sleep(IDLE_SECONDS)
        self._idle = None
        if not self.followers:
            await self._stop()

    async def _stop(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None and idle is not asyncio.current_task():
            idle.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
