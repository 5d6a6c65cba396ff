"""PublishEvents across a frozen nats-server: every answer tells the truth (QA s26 F1).

NATS frozen (SIGSTOP) longer than the service waits for it: nats-py leaves the connection after
its unanswered PINGs (4-6 s), and whatever it had written stays in the frozen server's socket
buffer and is stored once the server is continued. An event of a batch written and not
acknowledged was then published "again" by a path that, finding the connection down, never
sent it and answered "not stored" — a client trusting that stored the batch twice
(QA: 48 of 297 batches), and over HTTP one whose ids the service filled in could not even
retry safely.

What must hold, checked here for gRPC batches with the ids left to the service and with ids
set, and for `POST /v1/events:batchPublish` through the gateway:

- an answer's ErrorInfo (reason DEPENDENCY_UNAVAILABLE) says how many leading events are stored
  (`stored`), how many after them may or may not be (`unknown`, their ids in `ids`) and how
  many were never sent (`notStored`, the rest);
- every event answered as not stored is absent from the log once NATS is back;
- publishing the unknown ones again with the ids from the answer (and the never-sent ones
  again) stores every event of every batch exactly once.

The nats-server is the test's own (frozen and continued by its pid); the service waits for it
BUDGET seconds (EVENTS_PUBLISH_TIMEOUT_SECONDS) and it stays frozen FREEZE seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from events_helpers import Janitor, event, list_all, own_event_log
from gateway_helpers import start_gateway
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from amelia.v1 import events_pb2
from amelia_common.embedded import EmbeddedNats
from amelia_common.eventlog import StartAt, make_event
from amelia_common.eventlog.log import Prepared
from amelia_common.eventlog.pipeline import BatchUnavailableError, PublishFailedError
from amelia_common.grpc_client import STATUS_DETAILS
from amelia_common.settings import Settings

BUDGET = 2.0
# Longer than nats-py takes to leave a silent server (4-6 s) plus BUDGET: the failing answers
# come while NATS is still frozen.
FREEZE = 10.0
BATCH = 5
RATE = 10.0  # batches a second, on each way in
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


@dataclass
class Answer:
    """What one failed batch was told: events[:stored] stored, events[stored:stored+unknown]
    maybe (ids: theirs), the rest never sent."""

    message: str
    stored: int
    unknown: int
    ids: list[str]
    detailed: bool = True  # said in the ErrorInfo (not only in words)


@dataclass
class Batches:
    sent: dict[str, list[events_pb2.Event]] = field(default_factory=dict)
    ok: set[str] = field(default_factory=set)
    failed: dict[str, Answer] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)


def from_metadata(message: str, metadata: dict[str, str], size: int) -> Answer:
    """The answer's ErrorInfo metadata read as the docs say; an answer without it (the old
    service) is read as its words say: "may or may not" of all, else "not stored" of all."""
    if "stored" in metadata:
        ids = [i for i in metadata.get("ids", "").split(",") if i]
        answer = Answer(message, int(metadata["stored"]), int(metadata["unknown"]), ids)
        assert int(metadata["notStored"]) == size - answer.stored - answer.unknown, metadata
        assert len(ids) == answer.unknown, metadata
        return answer
    if "may or may not" in message:
        return Answer(message, 0, size, [], detailed=False)
    return Answer(message, 0, 0, [], detailed=False)


def grpc_answer(exc: grpc.aio.AioRpcError, size: int) -> Answer:
    message = exc.details() or ""
    metadata: dict[str, str] = {}
    raw = next((v for k, v in exc.trailing_metadata() or () if k == STATUS_DETAILS), None)
    if isinstance(raw, bytes):
        for detail in status_pb2.Status.FromString(raw).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                metadata = dict(info.metadata)
    return from_metadata(message, metadata, size)


def http_answer(body: dict[str, Any], size: int) -> Answer:
    metadata: dict[str, str] = {}
    for detail in body.get("details", []):
        if detail.get("@type") == ERROR_INFO:
            metadata = detail.get("metadata", {})
    return from_metadata(body["message"], metadata, size)


async def stopped(pid: int) -> None:
    """Return once every thread of `pid` is stopped (SIGSTOP reaches a process's threads one by
    one: a nats-server thread running on another CPU answered 5 publishes written after the
    signal was sent, in 1 of 3 runs on a loaded machine)."""
    async with asyncio.timeout(10):
        while True:
            states = thread_states(pid)
            if states and all(state in ("T", "t") for state in states):
                return
            await asyncio.sleep(0.01)


def thread_states(pid: int) -> list[str]:
    """The state letter of each thread of `pid` (/proc/<pid>/task/*/stat)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return states


def batch_of(name: str, subject: str, with_ids: bool) -> list[events_pb2.Event]:
    events = [event("test.freeze", subject, batch=name, k=k) for k in range(BATCH)]
    if with_ids:
        for k, ev in enumerate(events):
            ev.id = f"{name}-{k}"
    return events


async def publish_grpc(
    stub: Any, name: str, events: list[events_pb2.Event], batches: Batches
) -> None:
    batches.sent[name] = events
    try:
        await stub.PublishEvents(events_pb2.PublishEventsRequest(events=events), timeout=120)
        batches.ok.add(name)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            batches.other.append(f"{name}: {exc.code().name} {exc.details()}")
            return
        batches.failed[name] = grpc_answer(exc, len(events))


async def publish_http(
    http: httpx.AsyncClient, name: str, events: list[events_pb2.Event], batches: Batches
) -> None:
    batches.sent[name] = events
    body = {"events": [json_format.MessageToDict(ev) for ev in events]}
    reply = await http.post("/v1/events:batchPublish", json=body)
    if reply.status_code == 200:
        batches.ok.add(name)
    elif reply.status_code == 503:
        batches.failed[name] = http_answer(reply.json(), len(events))
    else:
        batches.other.append(f"{name}: {reply.status_code} {reply.text[:300]}")


async def stored_counts(stub: Any, subject: str) -> Counter[tuple[str, int]]:
    events = await list_all(stub, events_pb2.EventFilter(subject=subject), page_size=1000)
    return Counter((ev.data["batch"], int(ev.data["k"])) for ev in events)


async def test_batches_across_a_frozen_nats_are_answered_truthfully(
    settings: Settings, private_nats: EmbeddedNats, janitor: Janitor, resource: str
) -> None:
    isolated = settings.model_copy(
        update={"NATS_URL": private_nats.url, "EVENTS_PUBLISH_TIMEOUT_SECONDS": BUDGET}
    )
    svc = await janitor.start(isolated)
    gateway = await start_gateway(
        settings.model_copy(
            update={
                "NATS_URL": private_nats.url,
                "EVENTS_ADDRESS": svc.address,
                "EVENTS_PUBLISH_TIMEOUT_SECONDS": BUDGET,
            }
        )
    )
    pid = private_nats.pid()
    assert pid is not None
    batches = Batches()
    tasks: list[asyncio.Task[None]] = []
    frozen = False
    frozen_at = 0.0
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as http:
            started = time.monotonic()
            n = 0
            # Batches before, during and after the freeze: grpc with ids left to the service,
            # grpc with ids set, http with ids left to the service.
            while time.monotonic() - started < FREEZE + 5.0:
                if not frozen and time.monotonic() - started > 1.5:
                    os.kill(pid, signal.SIGSTOP)
                    frozen = True
                    frozen_at = time.monotonic()
                if frozen and pid and time.monotonic() - frozen_at > FREEZE:
                    os.kill(pid, signal.SIGCONT)
                    pid = 0
                kinds = (("g", False), ("i", True), ("h", False))
                for kind, with_ids in kinds:
                    name = f"{kind}{n}"
                    events = batch_of(name, resource, with_ids)
                    if kind == "h":
                        coro = publish_http(http, name, events, batches)
                    else:
                        coro = publish_grpc(svc.stub, name, events, batches)
                    tasks.append(asyncio.create_task(coro))
                n += 1
                await asyncio.sleep(1 / RATE)
            await asyncio.gather(*tasks)
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)
        for task in tasks:
            task.cancel()
        await gateway.stop()

    assert not batches.other, batches.other
    assert batches.failed, "no batch failed: the freeze did not reach the publishers"
    answered = Counter(
        ("stored", a.stored > 0, "unknown", a.unknown > 0, "never sent", a.stored + a.unknown < 5)
        for a in batches.failed.values()
    )
    print(f"{len(batches.sent)} batches, {len(batches.ok)} ok, failed: {dict(answered)}")

    # NATS is back: what the frozen server had in its socket buffer is stored by now.
    await asyncio.sleep(2.0)
    counts = await stored_counts(svc.stub, resource)
    lies = []
    for name, answer in sorted(batches.failed.items()):
        for k in range(BATCH):
            copies = counts[(name, k)]
            if k < answer.stored and copies != 1:
                lies.append(f"{name}[{k}] answered stored, {copies} in the log: {answer.message}")
            if k >= answer.stored + answer.unknown and copies:
                lies.append(f"{name}[{k}] answered not stored, in the log: {answer.message}")
    for name in batches.ok:
        for k in range(BATCH):
            if counts[(name, k)] != 1:
                lies.append(f"{name}[{k}] answered OK, {counts[(name, k)]} in the log")
    assert not lies, f"{len(lies)} untrue answers: " + "\n".join(lies[:10])
    vague = [name for name, answer in batches.failed.items() if not answer.detailed]
    assert not vague, f"answers without the ErrorInfo that says which events are stored: {vague}"
    unknown = [answer for answer in batches.failed.values() if answer.unknown]
    assert unknown, "no answer said 'may or may not be stored': the freeze came at no write"
    over_http = [name for name, answer in batches.failed.items() if answer.unknown]
    assert any(name.startswith("h") for name in over_http), "no HTTP answer gave ids"
    for answer in unknown:
        assert "may or may not be stored" in answer.message, answer.message
        assert "EVENTS_DEDUP_WINDOW_SECONDS" in answer.message, answer.message
        if answer.unknown <= 5:  # few enough to be named in the message too
            assert all(i in answer.message for i in answer.ids), answer.message

    # The ids a "may or may not" answer gives make a retry safe: the unknown events again with
    # those ids, and the never-sent ones again, store every event of every batch once.
    for name, answer in batches.failed.items():
        events = batches.sent[name]
        retry = []
        for offset, ev in enumerate(events[answer.stored :]):
            again = events_pb2.Event()
            again.CopyFrom(ev)
            if offset < answer.unknown:
                if ev.id:
                    assert answer.ids[offset] == ev.id, (answer.ids, ev.id)
                again.id = answer.ids[offset]
            retry.append(again)
        reply = await svc.stub.PublishEvents(events_pb2.PublishEventsRequest(events=retry))
        assert len(reply.events) == len(retry)
    counts = await stored_counts(svc.stub, resource)
    wrong = {
        (name, k): counts[(name, k)]
        for name in batches.sent
        for k in range(BATCH)
        if counts[(name, k)] != 1
    }
    assert not wrong, f"{len(wrong)} events not stored exactly once: {sorted(wrong.items())[:10]}"


async def test_a_pipeline_written_into_a_frozen_nats_may_be_stored(
    settings: Settings, private_nats: EmbeddedNats, resource: str
) -> None:
    """The agents' run pipeline's path (`PublishPipeline`, no gRPC): events written into the
    socket of a NATS that then froze, not acknowledged in time, are "may or may not be stored"
    (`PublishFailedError.sent`, listed in `unknown`) — they are in the log once NATS runs
    again — never "not stored", though the connection was down when they were given up on."""
    isolated = settings.model_copy(
        update={"NATS_URL": private_nats.url, "EVENTS_PUBLISH_TIMEOUT_SECONDS": BUDGET}
    )
    async with own_event_log(isolated, "freeze") as event_log:
        pid = private_nats.pid()
        assert pid is not None
        pipeline = event_log.pipeline()
        ids = [f"pipe-{resource[6:]}-{k}" for k in range(BATCH)]
        os.kill(pid, signal.SIGSTOP)
        try:
            await stopped(pid)
            for k, event_id in enumerate(ids):
                await pipeline.submit(
                    make_event("test.freeze", resource, {"k": k}, source="t", event_id=event_id)
                )
            # Settled once nats-py has left the silent server (a run's node ends later than
            # its tokens were written): the retry finds the connection down.
            async with asyncio.timeout(20):
                while event_log.nc.is_connected:  # noqa: ASYNC110 - polling nats-py's state
                    await asyncio.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(PublishFailedError) as raised:
                await pipeline.flush()
            waited = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert raised.value.sent, raised.value.message
        assert "may or may not be stored" in raised.value.message, raised.value.message
        assert [item.event.id for item in pipeline.unknown] == ids
        # Given up on within the event's wait and its retry's (each BUDGET), not later.
        assert waited < 2 * BUDGET + 2, waited

        got: list[str] = []
        async with event_log.read(["test.*"], resource, StartAt.beginning()) as reader:
            async with asyncio.timeout(30):
                async for stored in reader:
                    got.append(stored.id)
                    if len(got) == BATCH:
                        break
        assert got == ids  # what the frozen server had in its socket buffer, stored once


def test_a_batch_answer_says_which_events_are_which() -> None:
    """The words and the ErrorInfo of each shape of answer (no NATS needed)."""
    batch = [
        Prepared(events_pb2.Event(id=f"e{k}", type="test.x"), b"", "s", f"e{k}") for k in range(6)
    ]
    sent = PublishFailedError("…", sent=True, reason="not acknowledged within 2s: NATS is down")
    never = PublishFailedError("…", sent=False, reason="NATS is unreachable for 2s")

    mixed = BatchUnavailableError.of(batch, 2, batch[2:4], sent, 0, 120)
    assert mixed.metadata() == {"stored": "2", "unknown": "2", "ids": "e2,e3", "notStored": "2"}
    assert mixed.detail.startswith("events[0:2] are stored; events[2:4] were sent"), mixed.detail
    assert "may or may not be stored (ids: e2, e3)" in mixed.detail, mixed.detail
    assert "events[4:6] were never sent to NATS" in mixed.detail, mixed.detail
    assert "publish events[2:] again with the same ids" in mixed.detail, mixed.detail
    assert "EVENTS_DEDUP_WINDOW_SECONDS, 120s" in mixed.detail, mixed.detail

    partly = BatchUnavailableError.of(batch, 3, [], never, 0, 120)
    assert partly.metadata() == {"stored": "3", "unknown": "0", "ids": "", "notStored": "3"}
    # A partly stored batch is never said "not stored" as a whole.
    assert "not stored" not in partly.detail, partly.detail
    assert "events[3:6] were never sent to NATS (NATS is unreachable" in partly.detail

    none = BatchUnavailableError.of(batch, 0, [], never, 0, 120)
    assert none.metadata()["notStored"] == "6"
    assert "the batch's 6 events are not stored: they were never sent" in none.detail

    many = BatchUnavailableError.of(batch, 0, batch, sent, 0, 120)
    assert many.metadata()["ids"] == "e0,e1,e2,e3,e4,e5"
    assert "(ids: in the ErrorInfo metadata `ids`)" in many.detail, many.detail
