"""Helpers for the events tests: the service in process with a real gRPC channel to it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from nats.js import JetStreamContext

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.eventlog import EventLog
from amelia_common.grpc_client import aio_channel
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings
from amelia_events.server import EventsService, build_service


@dataclass
class RunningEvents:
    svc: EventsService
    channel: grpc.aio.Channel
    stub: events_pb2_grpc.EventServiceStub
    address: str

    @property
    def log(self) -> EventLog:
        assert self.svc.event_log is not None
        return self.svc.event_log


async def start_events(settings: Settings) -> RunningEvents:
    svc = await build_service(settings)
    port = await svc.start()
    address = f"127.0.0.1:{port}"
    channel = aio_channel(address, settings)
    return RunningEvents(svc, channel, events_pb2_grpc.EventServiceStub(channel), address)


async def stop_events(running: RunningEvents) -> None:
    await running.channel.close()
    await running.svc.stop(grace=1.0)


@contextlib.asynccontextmanager
async def own_event_log(settings: Settings, name: str) -> AsyncIterator[EventLog]:
    """An `EventLog` on a NATS connection of its own (`test-<name>`, events from `tests.<name>`),
    its stream ensured; closed, with the connection, on the way out."""
    nc = await connect_nats(settings, f"test-{name}")
    log = EventLog(nc, settings, source=f"tests.{name}")
    try:
        await log.ensure_stream()
        yield log
    finally:
        await log.close()
        await nc.close()


def event(event_type: str, subject: str, **data: object) -> events_pb2.Event:
    """An envelope for PublishEvent."""
    ev = events_pb2.Event(type=event_type, subject=subject)
    if data:
        ev.data.update(data)
    return ev


async def publish(
    stub: events_pb2_grpc.EventServiceStub, event_type: str, subject: str, **data: object
) -> events_pb2.Event:
    resp = await stub.PublishEvent(
        events_pb2.PublishEventRequest(event=event(event_type, subject, **data))
    )
    return resp.event


async def collect(
    call: grpc.aio.UnaryStreamCall, count: int, timeout: float = 30.0
) -> list[events_pb2.Event]:
    """The next `count` events of a stream (fails when they do not come within `timeout`)."""
    got: list[events_pb2.Event] = []
    if count == 0:
        return got
    async with asyncio.timeout(timeout):
        async for item in call:
            got.append(item.event)
            if len(got) >= count:
                break
    return got


async def list_all(
    stub: events_pb2_grpc.EventServiceStub,
    flt: events_pb2.EventFilter,
    page_size: int = 0,
    **request: object,
) -> list[events_pb2.Event]:
    """Every event ListEvents returns for `flt`, following page tokens."""
    out: list[events_pb2.Event] = []
    token = ""
    while True:
        page = await stub.ListEvents(
            events_pb2.ListEventsRequest(
                filter=flt,
                page_size=page_size,
                page_token=token,
                **request,
            )
        )
        out.extend(page.events)
        token = page.next_page_token
        if not token:
            return out


async def consumers_matching(js: JetStreamContext, stream: str, needle: str) -> list[str]:
    """Names of the stream's consumers whose filter mentions `needle` (a test's own subject)."""
    names = []
    for info in await js.consumers_info(stream):
        filters = [info.config.filter_subject or "", *(info.config.filter_subjects or [])]
        if any(needle in f for f in filters):
            names.append(info.name)
    return names


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Poll `predicate` until it is true; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - polling another system
            await asyncio.sleep(0.1)


@dataclass
class Outcomes:
    """What a publisher attempted: ids that returned success (with sequence) or an error."""

    ok: dict[str, int] = field(default_factory=dict)
    failed: dict[str, tuple[grpc.StatusCode, str]] = field(default_factory=dict)


async def publish_until(
    stub: events_pb2_grpc.EventServiceStub,
    subject: str,
    outcomes: Outcomes,
    stop: asyncio.Event,
    *,
    timeout: float = 5.0,
    pause: float = 0.005,
) -> None:
    """Publish numbered events one after another until `stop`, recording every outcome."""
    prefix = uuid.uuid4().hex[:8]
    n = 0
    while not stop.is_set():
        ev = event("test.tick", subject, n=n)
        ev.id = f"tick-{prefix}-{n}"
        try:
            resp = await stub.PublishEvent(
                events_pb2.PublishEventRequest(event=ev), timeout=timeout
            )
            outcomes.ok[ev.id] = resp.event.sequence
        except grpc.aio.AioRpcError as exc:
            outcomes.failed[ev.id] = (exc.code(), exc.details() or "")
        n += 1
        await asyncio.sleep(pause)


async def follow(
    stub: events_pb2_grpc.EventServiceStub,
    flt: events_pb2.EventFilter,
    after: int,
    out: list[events_pb2.Event],
    errors: list[grpc.StatusCode],
) -> None:
    """A client that streams forever and, when a stream breaks, resumes after the last event
    it saw (what the gateway and the CLI do)."""
    while True:
        start = out[-1].sequence if out else after
        call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt, after_sequence=start))
        try:
            async for item in call:
                out.append(item.event)
        except grpc.aio.AioRpcError as exc:
            errors.append(exc.code())
            await asyncio.sleep(0.2)


class Janitor:
    """Stops what a test started (services, background tasks) even when the test fails, so a
    failure never leaves a server or a task behind to hang the session."""

    def __init__(self) -> None:
        self.running: list[RunningEvents] = []
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self, settings: Settings) -> RunningEvents:
        running = await start_events(settings)
        self.running.append(running)
        return running

    def task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.append(task)
        return task

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(BaseException):
                await task
        for running in self.running:
            with contextlib.suppress(Exception):
                await stop_events(running)


def rss_bytes() -> int:
    """This process's resident memory now (the events service runs in the test's process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")
