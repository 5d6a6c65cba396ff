"""The local model server's slots, taken by a call before it sends its request.

llama.cpp generates `slots` requests at a time (LOCAL_MODEL_SLOTS, its `/props` `total_slots`);
a request beyond them waits inside the server, unseen: no event, nothing in `amelia status`,
and the wait counted against the run's timeout (QA s27: 3 of 6 concurrent chat runs failed
"timeout", two without a token, while the status said "running 4, queued 0"). So a call takes
a slot here first: while it waits, its run says so (`run.model.waiting`, reason `slot`, with the
calls ahead) and the time is the run's schedule-to-start, not start-to-close (as Temporal tells
them apart): the executor gives a run its waits for a slot on top of its timeout (`RunWaits`).
A slot is given back when the call ends, fails or is cancelled.

Two steps, because the server may have other clients (the README's scale-out runs several
agents services against one llama-server; a person's curl):

1. this process's calls take one of `size` slots, first come first served (`SlotGate`, one per
   server URL and event loop): they never ask the server for more than it has;
2. then, one call of the process at a time (the gate's `door`, FIFO), the server itself is
   asked: llama.cpp's `GET /slots` (`is_processing` per slot) counts every client's requests.
   While all are busy the call waits here (polling 100 ms, backing off to 500 ms), with the
   event and the wait off the timeout; once one is free it sends, and keeps the door until
   `/slots` shows its request in a slot (a task id not busy before), its first chunk comes, or
   the server stops answering `/slots` — so the next call of the process sees it counted.

Why `/slots` rather than a lock shared by the replicas (PostgreSQL advisory locks): it is the
server's own truth, so it counts clients that are not Amelia and replicas on another database,
holds no connection per generating call, and needs no cleanup after a replica dies mid-call
(llama.cpp frees the slot when the connection closes). What it cannot close: two processes that
read the same free slot within the same few milliseconds both send, and the later one queues
inside llama.cpp as before (nothing serialises them across processes). A server without `/slots`
(not llama.cpp, or started without it: `amelia up` turns it on) leaves step 1 alone, said once
in the log; a `/slots` that does not answer (server restarting) skips step 2 for that call (its
own reconnect waits, `llm.reconnect`): a call never waits for `/slots` itself.

The calls waiting (either step) are the gauge `amelia_llm_slot_waiting_calls` of the
service's `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from amelia_agents.llm.base import ChatChunk
from amelia_agents.llm.reconnect import WAITING
from amelia_common.logging import get_logger
from amelia_common.metrics import LLM_SLOT_WAITING

log = get_logger("amelia.agents.llm")

# The event a waiting call publishes (the one a call waiting for an unreachable server does).
SLOT_REASON = "slot"
# Asking `/slots` again while the server is full: first after this, then 1.5 times longer each
# time up to the most (a waiting call costs the server two requests a second at most).
POLL_FIRST_SECONDS = 0.1
POLL_MOST_SECONDS = 0.5
# The longest a call keeps the door after sending, if the server never shows its request.
DOOR_KEPT_MOST_SECONDS = 10.0


class NoSlotsEndpointError(Exception):
    """The server has no `/slots` to ask (not llama.cpp, or started without the endpoint)."""


@dataclass(frozen=True)
class ServerSlots:
    """What the server's `/slots` says: its slots, and the requests they generate."""

    total: int
    # One key per busy slot: (slot id, llama.cpp's `id_task`), new for each request it takes.
    busy: frozenset[tuple[Any, Any]]

    @property
    def free(self) -> int:
        return self.total - len(self.busy)

    @classmethod
    def parse(cls, listed: object) -> ServerSlots:
        """llama.cpp's `/slots` answer; NoSlotsEndpointError for anything else."""
        if not isinstance(listed, list) or not listed:
            raise NoSlotsEndpointError(f"not a list of slots: {str(listed)[:80]}")
        busy = set()
        for slot in listed:
            processing = slot.get("is_processing") if isinstance(slot, dict) else None
            if not isinstance(processing, bool):
                raise NoSlotsEndpointError(f"a slot without is_processing: {str(slot)[:80]}")
            if processing:
                busy.add((slot.get("id"), slot.get("id_task")))
        return cls(len(listed), frozenset(busy))


# The server's slots now: None when it does not answer `/slots` (restarting); raises
# NoSlotsEndpointError when it has none.
AskServer = Callable[[], Awaitable[ServerSlots | None]]


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
    server may have other slots). `door`: the one call of the process asking the server."""

    size: int
    busy: int = 0
    queue: deque[asyncio.Future[None]] = field(default_factory=deque)
    door: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Calls of this process waiting for the server's slots (at the door, or holding it).
    server_waiting: int = 0
    # Whether the server's `/slots` is asked (False once it had none).
    shared: bool = True
    # What `/slots` said while the call at the door waits for the server (None: not waiting).
    server_full: ServerSlots | None = None

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot of this process now."""
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


def _event(
    server: str, slots: SlotGate, full: ServerSlots | None = None, ahead: int = 0
) -> ChatChunk:
    """The `run.model.waiting` event of a call waiting for this process's slots, or (`full`)
    for the server's, taken by other clients too (`ahead`: this process's calls before it)."""
    if full is None:
        ahead, size = slots.waiting, slots.size
        why = f"{ahead} waiting ahead, {slots.busy} of {size} slots generating"
    else:
        size = full.total
        why = (
            f"{ahead} waiting ahead, {len(full.busy)} of {size} slots generating, "
            "some for other clients of the server (another agents service?)"
        )
    message = (
        f"waiting for a free slot of the local model: {why} ({server}, LOCAL_MODEL_SLOTS); "
        "the wait does not count against the run's timeout"
    )
    return ChatChunk(
        event=(
            WAITING,
            {
                "server": server,
                "reason": SLOT_REASON,
                "ahead": ahead,
                "slots": size,
                "error": "",
                "seconds": 0,
                "message": message,
            },
        )
    )


class _Wait:
    """A call's wait for a slot, once started: off its run's timeout, and in the gauge."""

    def __init__(self) -> None:
        self.waits: RunWaits | None = None
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.waits = RUN_WAITS.get()
            if self.waits is not None:
                self.waits.start()
            LLM_SLOT_WAITING.inc()

    def stop(self) -> None:
        if self.started:
            self.started = False
            LLM_SLOT_WAITING.dec()
            if self.waits is not None:
                self.waits.stop()


@asynccontextmanager
async def _taken(slots: SlotGate) -> AsyncIterator[None]:
    """A slot of this process held while the body runs, given back however it ends."""
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


async def _ask(server: str, slots: SlotGate, ask: AskServer) -> ServerSlots | None:
    """The server's slots; None when it cannot say now, or (said once) has no `/slots`."""
    try:
        return await ask()
    except NoSlotsEndpointError as exc:
        if slots.shared:
            slots.shared = False
            log.warning(
                "local model server has no usable /slots: only this process's calls are "
                "counted; another client's requests queue inside the server",
                server=server,
                error=str(exc),
            )
        return None


async def _door_kept_until_started(
    server: str, slots: SlotGate, ask: AskServer, before: ServerSlots, started: asyncio.Event
) -> None:
    """Open the door once the server shows the call's request in a slot (a busy slot it did
    not show `before`), the call's first chunk came (`started`), `/slots` stops answering, or
    at the latest after DOOR_KEPT_MOST_SECONDS. (The door is opened by the task's done callback,
    which also runs for a task cancelled before it started, when no `finally` of it would.)"""
    delay = POLL_FIRST_SECONDS
    until = time.monotonic() + DOOR_KEPT_MOST_SECONDS
    while not started.is_set() and time.monotonic() < until:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await started.wait()
        if started.is_set():
            return
        now = await _ask(server, slots, ask)
        if now is None or now.busy - before.busy:
            return
        delay = min(delay * 1.5, POLL_MOST_SECONDS)


async def in_slot(
    server: str, slots: SlotGate, stream: AsyncIterator[ChatChunk], ask: AskServer | None = None
) -> AsyncIterator[ChatChunk]:
    """`stream`, started once a slot of this process is free and then (`ask`: the server's
    `/slots`) one of the server's; while it waits, one `run.model.waiting` event."""
    announced = not slots.free()
    if announced:
        yield _event(server, slots)
    async with _taken(slots):
        before: ServerSlots | None = None
        if ask is not None and slots.shared:
            wait = _Wait()
            ahead = slots.server_waiting
            slots.server_waiting += 1
            try:
                if slots.door.locked() and slots.server_full is not None:
                    wait.start()  # behind a call of this process waiting for the server
                    if not announced:
                        announced = True
                        yield _event(server, slots, slots.server_full, ahead)
                await slots.door.acquire()
                try:
                    delay = POLL_FIRST_SECONDS
                    while (
                        before := await _ask(server, slots, ask)
                    ) is not None and before.free <= 0:
                        slots.server_full = before
                        wait.start()
                        if not announced:
                            announced = True
                            yield _event(server, slots, before, ahead)
                        await asyncio.sleep(delay)
                        delay = min(delay * 1.5, POLL_MOST_SECONDS)
                except BaseException:
                    slots.door.release()
                    raise
                finally:
                    slots.server_full = None
                if before is None:  # the server cannot say: nothing to wait for
                    slots.door.release()
            finally:
                slots.server_waiting -= 1
                wait.stop()
        started = asyncio.Event()
        opener = None
        if before is not None and ask is not None:  # through the door: keep it a moment
            opener = asyncio.create_task(
                _door_kept_until_started(server, slots, ask, before, started)
            )
            opener.add_done_callback(lambda _: slots.door.release())
        try:
            async for chunk in stream:
                started.set()
                yield chunk
        finally:  # the call ends now, not when the collector finds the generator
            started.set()
            if opener is not None:
                opener.cancel()  # the door opens as it ends (not awaited: a cancel of
                # this call must not be taken for the opener's)
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
