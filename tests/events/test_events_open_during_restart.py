"""Calls made just as NATS dies are answered once it is back, not after the whole bound.

QA s26 F6: StreamEvents resuming (`after_sequence`), from now (with and without a filter) and
GetEvent, made the instant nats-server was killed, all failed after EVENTS_PUBLISH_TIMEOUT_SECONDS
(10 s) with UNAVAILABLE "did not answer", though NATS was back within 2 s: their JetStream API
request (stream info, a stored message) was written on the dying connection, lost with it, and
never sent again; each waited for its answer for the whole bound. Publishes, ListEvents and
StreamEvents from the beginning, which try again on their own, opened at 2.1 s.

No timing is relied on for the request to be lost: the test's own nats-server is frozen
(SIGSTOP: the connection stays up, the requests go into its socket and no answer comes), the
calls are made and wait, then it is killed (the requests die with it, unanswered) and started
again on the same store and port. Each call must then succeed well within the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from events_helpers import Janitor, event, publish

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.embedded import EmbeddedNats
from amelia_common.settings import Settings

BOUND = 15.0  # EVENTS_PUBLISH_TIMEOUT_SECONDS here: what a lost request used to cost


def calls(stub: events_pb2_grpc.EventServiceStub, subject: str, sequence: int) -> dict[str, Any]:
    flt = events_pb2.EventFilter(subject=subject)

    def opens(request: events_pb2.StreamEventsRequest) -> Callable[[], Awaitable[None]]:
        async def stream() -> None:
            call = stub.StreamEvents(request)
            try:
                await call.initial_metadata()  # subscribed, or the call ended
                if call.done():
                    await call.read()  # raises the call's error
            finally:
                call.cancel()

        return stream

    return {
        "StreamEvents after_sequence": opens(
            events_pb2.StreamEventsRequest(filter=flt, after_sequence=sequence)
        ),
        "StreamEvents from now": opens(events_pb2.StreamEventsRequest()),
        "StreamEvents from now, filtered": opens(events_pb2.StreamEventsRequest(filter=flt)),
        "StreamEvents from the beginning": opens(
            events_pb2.StreamEventsRequest(filter=flt, from_beginning=True)
        ),
        "GetEvent": lambda: stub.GetEvent(events_pb2.GetEventRequest(name=f"events/{sequence}")),
        "ListEvents": lambda: stub.ListEvents(events_pb2.ListEventsRequest(filter=flt)),
        "PublishEvent": lambda: stub.PublishEvent(
            events_pb2.PublishEventRequest(event=event("test.restart", subject))
        ),
    }


async def timed(call: Callable[[], Awaitable[Any]], started: float) -> tuple[str, str, float]:
    try:
        async with asyncio.timeout(BOUND * 3):
            await call()
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or "", time.monotonic() - started
    return "OK", "", time.monotonic() - started


def thread_states(pid: int) -> list[str]:
    """The state letter of each thread of `pid` (T: stopped)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return states


async def frozen(pid: int) -> None:
    """Until every thread of `pid` is stopped (a busy machine takes a while to stop them all)."""
    async with asyncio.timeout(30):
        while not all(state in ("T", "t") for state in thread_states(pid) or ["?"]):  # noqa: ASYNC110 - polling another process
            await asyncio.sleep(0.01)


async def test_calls_whose_requests_die_with_nats_are_answered_once_it_is_back(
    settings: Settings, private_nats: EmbeddedNats, resource: str, janitor: Janitor
) -> None:
    running = await janitor.start(
        settings.model_copy(
            update={"NATS_URL": private_nats.url, "EVENTS_PUBLISH_TIMEOUT_SECONDS": BOUND}
        )
    )
    stub = running.stub
    stored = await publish(stub, "test.before", resource)
    # A GetEvent and a stream on the same sequence before the outage: the service has a shared
    # tap nowhere near these subjects, and its JetStream contexts are warm.
    await stub.GetEvent(events_pb2.GetEventRequest(name=f"events/{stored.sequence}"))

    pid = private_nats.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        await frozen(pid)
        started = time.monotonic()
        each = calls(stub, resource, stored.sequence)
        pending = [asyncio.ensure_future(timed(call, started)) for call in each.values()]
        # Long enough for every call to have written its first request into the frozen
        # server's socket (the service is in this process: a few ms; generous for a busy
        # machine), short of the first retry of any of them.
        await asyncio.sleep(0.5)
        assert not any(p.done() for p in pending), [p.result() for p in pending if p.done()]
    finally:
        os.kill(pid, signal.SIGKILL)
    await asyncio.to_thread(private_nats.stop)  # reaps it: what it was sent is gone
    await asyncio.to_thread(private_nats.start)
    back = time.monotonic() - started
    results = dict(zip(each, await asyncio.gather(*pending), strict=True))
    print(f"\nNATS back after {back:.1f}s:")
    for name, (code, details, seconds) in results.items():
        print(f"  {name}: {code} after {seconds:.1f}s {details}")
    failed = {name: r for name, r in results.items() if r[0] != "OK"}
    assert failed == {}, failed
    # Answered once NATS was back, not after the whole bound (the lost request waited for it
    # all): a margin of half the bound for a busy machine's reconnect and retries.
    late = {name: r[2] for name, r in results.items() if r[2] > back + BOUND / 2}
    assert late == {}, (back, late)
