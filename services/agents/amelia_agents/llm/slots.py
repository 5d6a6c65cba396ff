"""The local model server's slots, taken by this process's calls before they send a request.

llama.cpp generates `slots` requests at a time (LOCAL_MODEL_SLOTS, its `/props` `total_slots`);
a request beyond them waits inside the server, unseen: no event, nothing in `amelia status`,
and the wait counted against the run's timeout (QA s27: 3 of 6 concurrent chat runs failed
"timeout", two without a token, while the status said "running 4, queued 0"). So a call takes
a slot here first (`SlotGate`, first come first served, one per server URL and event loop):
while it waits, its run says so (`run.model.waiting`, reason `slot`, with the calls ahead) and
the time is the run's schedule-to-start, not start-to-close (as Temporal tells them apart):
the executor gives a run its waits for a slot on top of its timeout (`RunWaits`).
A slot is given back when the call ends, fails or is cancelled.

Only this process's calls are counted: another process (a second agents service, a person's
curl) sharing the server still queues inside it. The calls waiting are the gauge
`amelia_llm_slot_waiting_calls` of the service's `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from amelia_agents.llm.base import ChatChunk
from amelia_agents.llm.reconnect import WAITING
from amelia_common.metrics import LLM_SLOT_WAITING

# The event a waiting call publishes (the one a call waiting for an unreachable server does).
SLOT_REASON = "slot"


@dataclass
class RunWaits:
    """The time the calls of one run spent waiting for a slot: the wall time during which at
    least one of them waited (a run's parallel branches waiting together count once)."""

    waiting: int = 0
    since: float = 0.0
    total: float = 0.0

    def start(self) -> None:
        if self.waiting == 0:
            self.since = time.monotonic()
        self.waiting += 1

    def stop(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.total += time.monotonic() - self.since

    def seconds(self) -> float:
        """Waited so far, the wait going on included."""
        return self.total + (time.monotonic() - self.since if self.waiting else 0.0)


# The run whose calls wait: set by the executor before it starts the run's graph.
RUN_WAITS: contextvars.ContextVar[RunWaits | None] = contextvars.ContextVar(
    "amelia_slot_waits", default=None
)


@dataclass
class SlotGate:
    """`size` slots, taken in the order asked for; `size` follows the server's (a restarted
    server may have other slots)."""

    size: int
    busy: int = 0
    queue: deque[asyncio.Future[None]] = field(default_factory=deque)

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        return sum(1 for f in self.queue if not f.done())

    def free(self) -> bool:
        return self.busy < self.size and not self.waiting

    def resize(self, size: int) -> None:
        self.size = size
        self._wake()

    async def acquire(self) -> None:
        if self.free():
            self.busy += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.append(future)
        LLM_SLOT_WAITING.inc()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # given a slot as it was cancelled: give it back
            raise
        finally:
            LLM_SLOT_WAITING.dec()
            if future in self.queue:
                self.queue.remove(future)

    def release(self) -> None:
        self.busy -= 1
        self._wake()

    def _wake(self) -> None:
        while self.queue and self.busy < self.size:
            future = self.queue.popleft()
            if not future.done():
                self.busy += 1
                future.set_result(None)


# By event loop (weakly: a closed loop's gates, and the slots its calls held, go with it).
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, SlotGate]] = (
    weakref.WeakKeyDictionary()
)


def gate(url: str, size: int) -> SlotGate:
    """The slots of the server at `url` for this event loop, `size` of them."""
    gates = _gates.setdefault(asyncio.get_running_loop(), {})
    found = gates.get(url)
    if found is None:
        found = gates[url] = SlotGate(size)
    elif found.size != size:
        found.resize(size)
    return found


def _event(server: str, slots: SlotGate) -> ChatChunk:
    ahead = slots.waiting
    message = (
        f"waiting for a free slot of the local model: {ahead} waiting ahead, "
        f"{slots.busy} of {slots.size} slots generating ({server}, LOCAL_MODEL_SLOTS); "
        "the wait does not count against the run's timeout"
    )
    return ChatChunk(
        event=(
            WAITING,
            {
                "server": server,
                "reason": SLOT_REASON,
                "ahead": ahead,
                "slots": slots.size,
                "error": "",
                "seconds": 0,
                "message": message,
            },
        )
    )


@asynccontextmanager
async def _taken(slots: SlotGate) -> AsyncIterator[None]:
    """A slot held while the body runs, given back however it ends."""
    waits = RUN_WAITS.get()
    if waits is not None:
        waits.start()
    try:
        await slots.acquire()
    finally:
        if waits is not None:
            waits.stop()
    try:
        yield
    finally:
        slots.release()


async def in_slot(
    server: str, slots: SlotGate, stream: AsyncIterator[ChatChunk]
) -> AsyncIterator[ChatChunk]:
    """`stream`, started once a slot is free; while none is, one `run.model.waiting` event."""
    if not slots.free():
        yield _event(server, slots)
    async with _taken(slots):
        try:
            async for chunk in stream:
                yield chunk
        finally:  # the call ends now, not when the collector finds the generator
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
