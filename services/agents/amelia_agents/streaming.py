"""StreamRun: a run's events from the events service — replay, then live, until the run ends.

The agents service does not read JetStream itself for this: it asks the events service
(`StreamEvents` with subject `runs/<uuid>`), so replay and live delivery behave exactly like any
other event stream in the mesh. The stream ends after the run's terminal event
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

import grpc

from amelia.v1 import agents_pb2, events_pb2, events_pb2_grpc
from amelia_agents.convert import run_name
from amelia_agents.lifecycle import TERMINAL_TYPES
from amelia_agents.models import TERMINAL_STATES, RunRow
from amelia_agents.store import Store
from amelia_common.errors import StreamEndedError, UnavailableError
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings

IDLE_CHECK_SECONDS = 2.0
# Events per StreamEvents message: what the events service already read comes in one message.
# It also bounds a StreamRun message: the events service keeps a message under 1 MiB.
EVENTS_PER_MESSAGE = 256
# Events per ListEvents page when reading what came after the run's end.
AFTER_END_PAGE = 100
_DONE = object()


class RunStreamer:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.channel = aio_channel(settings.EVENTS_ADDRESS, settings)
        self.stub = events_pb2_grpc.EventServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

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
        request = events_pb2.StreamEventsRequest(
            filter=events_pb2.EventFilter(subject=run_name(row.id)),
            max_events_per_message=EVENTS_PER_MESSAGE,
        )
        if after_sequence:
            request.after_sequence = after_sequence
        else:
            request.from_beginning = True
        call = self.stub.StreamEvents(request)
        inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)

        async def pump() -> None:
            try:
                async for response in call:
                    await inbox.put(list(response.events) or [response.event])
                await inbox.put(_DONE)
            except grpc.aio.AioRpcError as exc:
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
                    # What follows the end is read as it is now (the same as joining later).
                    yield item[: end + 1]
                    async for page in self._after_end(row, item[end].sequence):
                        yield page
                    return
                detail = (
                    f"{item.code().name}: {item.details()}"
                    if isinstance(item, grpc.aio.AioRpcError)
                    else "the stream ended"
                )
                raise StreamEndedError(
                    f"events service at {self.settings.EVENTS_ADDRESS} ({detail}); reconnect "
                    f"with after_sequence={last} to continue without a gap"
                )
        finally:
            call.cancel()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _after_end(
        self, row: RunRow, after_sequence: int
    ) -> AsyncIterator[list[events_pb2.Event]]:
        """The run's events logged after `after_sequence` (past its end), as they are now: pages."""
        request = events_pb2.ListEventsRequest(
            filter=events_pb2.EventFilter(subject=run_name(row.id)),
            after_sequence=after_sequence,
            page_size=AFTER_END_PAGE,
        )
        while True:
            try:
                reply = await self.stub.ListEvents(request)
            except grpc.aio.AioRpcError as exc:
                raise UnavailableError(
                    f"the events service at {self.settings.EVENTS_ADDRESS}",
                    f"{exc.code().name}: {exc.details()}; reconnect with after_sequence = the "
                    "last event seen to continue without a gap",
                ) from None
            if reply.events:
                yield list(reply.events)
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token


def _terminal_index(batch: list[events_pb2.Event]) -> int | None:
    """Where the run's end is in `batch`, if it is there."""
    for index, event in enumerate(batch):
        if event.type in TERMINAL_TYPES:
            return index
    return None
