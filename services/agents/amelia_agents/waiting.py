"""WaitRun: block until a run ends or pauses on a question (LangGraph's runs wait/join).

No polling of PostgreSQL: a waiter wakes on the run's own events, read by the process's run
feed (`runfeed.RunFeed`, the reader StreamRun shares). The status is stored before the event
that tells of it is published (`runstate`, rule 4), so the order below misses nothing: register
with the feed first, then read the run; if it has not settled yet, the event that settles it
is stored after the feed's position and reaches the follower. The waiters of one run share one
follower (`_Watch`) and the one read of the run once it has settled: a hundred waiters cost one
set of queued events and one statement, not a hundred.

A waiter that gives up (its timeout, its deadline, its client gone) leaves the run untouched;
the last one to leave takes the run's follower away with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass

import grpc

from amelia.v1 import agents_pb2
from amelia_agents import convert
from amelia_agents.lifecycle import TERMINAL_TYPES
from amelia_agents.models import TERMINAL_STATES, RunRow, RunState
from amelia_agents.runfeed import RunFeed
from amelia_agents.store import Store
from amelia_common.errors import AmeliaError, InvalidArgumentError, StreamEndedError
from amelia_common.eventlog import EventLogUnavailableError

# The longest a WaitRun waits (its default too); a client waits again for longer.
MAX_WAIT_SECONDS = 600.0
# Answer this much before the call's own deadline, so the client reads our message, not gRPC's.
DEADLINE_MARGIN_SECONDS = 0.2
# Events that settle a wait: the run's end, or its pause on a question.
SETTLING_TYPES = frozenset((*TERMINAL_TYPES, "run.interrupted"))
_BATCH = 256
_BATCH_BYTES = 1024 * 1024


class DeadlineExceededError(AmeliaError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def settled(row: RunRow) -> bool:
    """Whether a wait for `row` is over: it ended, or it is PAUSED on a question."""
    return row.status in TERMINAL_STATES or row.status == RunState.PAUSED.value


@dataclass(frozen=True)
class WaitTime:
    """What a call waits: `seconds` here, after the `already` seconds its caller has waited
    since the wait's `start_time` (in calls before this one)."""

    already: float
    seconds: float


def wait_time(request: agents_pb2.WaitRunRequest, time_remaining: float | None) -> WaitTime:
    """How long the call waits: what is left of its `timeout` (default and at most
    MAX_WAIT_SECONDS) since the caller's `start_time`, or less when the call's deadline comes
    first. A wait sent again (by its caller or by gRPC's retries, as it was) so ends when the
    caller's wait does, not a whole timeout after the last attempt."""
    limit = MAX_WAIT_SECONDS
    if request.HasField("timeout"):
        limit = convert.duration_seconds(request.timeout, "timeout")
        if not 0 < limit <= MAX_WAIT_SECONDS:
            raise InvalidArgumentError(
                f"timeout must be more than 0 s and at most {MAX_WAIT_SECONDS:g} s, got {limit:g} s"
                " (wait again for longer, or follow the run with StreamRun)"
            )
    already = 0.0
    if request.HasField("start_time"):
        # A start after now, or longer ago than the whole timeout, counts as now: the caller's
        # clock is apart from ours (a caller re-sends its wait only within its timeout).
        waited = time.time() - convert.timestamp_seconds(request.start_time, "start_time")
        already = waited if 0.0 < waited <= limit else 0.0
    seconds = limit - already
    if time_remaining is not None:
        seconds = min(seconds, max(0.0, time_remaining - DEADLINE_MARGIN_SECONDS))
    return WaitTime(already, seconds)


class _Watch:
    """One follower of a run's events for all its waiters; `done` once it has settled."""

    def __init__(self, waits: RunWaits, run_id: uuid.UUID) -> None:
        self.waiters = 0
        # The run as read once it settled (None: deleted meanwhile, a rollback's run).
        self.done: asyncio.Future[RunRow | None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(waits.watch(run_id, self.done))


class RunWaits:
    """The WaitRun calls of this process, sharing `feed`."""

    def __init__(self, store: Store, feed: RunFeed) -> None:
        self.store = store
        self.feed = feed
        self.watches: dict[uuid.UUID, _Watch] = {}

    async def wait(self, name: str, seconds: float, already: float = 0.0) -> RunRow:
        """The run `name` once settled; DeadlineExceededError after `seconds`, saying how long
        the caller waited in all (`already` before this call, then `seconds`)."""
        rid = convert.run_id(name)
        row = convert.found(await self.store.get_run(rid), convert.run_name(rid))
        if settled(row):
            return row
        watch = self.watches.get(rid)
        if watch is None or watch.done.done():
            watch = self.watches[rid] = _Watch(self, rid)
        watch.waiters += 1
        try:
            async with asyncio.timeout(seconds):
                found = await asyncio.shield(watch.done)
        except TimeoutError:
            row = await self.store.get_run(rid) or row
            waited = round(already + seconds, 1)
            raise DeadlineExceededError(
                f"{convert.run_name(rid)} is still {row.status} after {waited:g} s of waiting "
                "(the run goes on; wait again, or follow it with StreamRun)"
            ) from None
        finally:
            watch.waiters -= 1
            if watch.waiters == 0 and self.watches.get(rid) is watch:
                del self.watches[rid]
                watch.task.cancel()
        return convert.found(found, convert.run_name(rid))

    async def watch(self, rid: uuid.UUID, done: asyncio.Future[RunRow | None]) -> None:
        """Follow the run's events until one settles it (or the run settled already), then
        read it for all the waiters."""
        try:
            while not await self._follow_until_settled(rid):
                pass  # left the feed (fell behind, or its reader stopped): join again
            row = await self.store.get_run(rid)
            if not done.done():
                done.set_result(row)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - each waiter raises it
            if not done.done():
                done.set_exception(exc)
                done.exception()  # retrieved: no "never retrieved" warning without waiters

    async def _follow_until_settled(self, rid: uuid.UUID) -> bool:
        """True once the run has settled; False when the follower left the feed before."""
        try:
            follower = await self.feed.follow(rid)
        except EventLogUnavailableError as exc:
            raise StreamEndedError(f"cannot wait for {convert.run_name(rid)}: {exc}") from None
        if follower is None:
            raise StreamEndedError(
                f"cannot wait for {convert.run_name(rid)}: the service is stopping; wait again"
            )
        try:
            row = await self.store.get_run(rid)  # after registering: see the module's note
            if row is None or settled(row):
                return True
            while True:
                batch = await follower.next_batch(_BATCH, _BATCH_BYTES)
                if batch is None:
                    return False
                if any(event.type in SETTLING_TYPES for event in batch):
                    return True
        finally:
            with contextlib.suppress(Exception):
                follower.leave()
