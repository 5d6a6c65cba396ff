"""The event log's client: how every service publishes to (and reads) the one JetStream stream.

Subject scheme (the only place it is defined):

    amelia.events.<collection>.<resource-id>.<type>

e.g. `amelia.events.runs.4f1c….run.token` for `subject="runs/4f1c…"`, `type="run.token"`.
Events without a subject use `_._`. Each message's payload is a serialized `amelia.v1.Event`
(without its sequence: JetStream assigns that), and its `Nats-Msg-Id` header is the event id,
so a retried publish is stored once within the dedup window.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from nats.aio.client import Client as NATS
from nats.js import api

from amelia.v1 import events_pb2
from amelia_common.settings import Settings

SUBJECT_PREFIX = "amelia.events"
_TYPE_TOKEN = re.compile(r"^[a-z][a-z0-9_-]*$")
_RESOURCE = re.compile(r"^([a-z][a-z0-9-]*)/([A-Za-z0-9_-]+|\*)$")


class InvalidEventError(ValueError):
    """An event, filter or pattern that cannot be stored or matched; the message says why."""


def validate_type(event_type: str) -> None:
    tokens = event_type.split(".")
    if len(tokens) < 2 or not all(_TYPE_TOKEN.match(t) for t in tokens):
        raise InvalidEventError(
            f"event type {event_type!r} must be dotted lowercase words, e.g. 'run.token'"
        )


def subject_tokens(subject: str, *, allow_wildcard: bool = False) -> str:
    """`runs/abc` → `runs.abc`; empty → `_._`; `runs/*` → `runs.*` when allowed."""
    if not subject:
        return "_._"
    match = _RESOURCE.match(subject)
    if not match or (match.group(2) == "*" and not allow_wildcard):
        raise InvalidEventError(
            f"subject {subject!r} must look like 'collection/id' (e.g. 'runs/4f1c…')"
            + (" or 'collection/*'" if allow_wildcard else "")
        )
    return f"{match.group(1)}.{match.group(2)}"


def nats_subject(event_type: str, subject: str) -> str:
    """Where an event with this type and subject is stored."""
    validate_type(event_type)
    return f"{SUBJECT_PREFIX}.{subject_tokens(subject)}.{event_type}"


def type_pattern_tokens(pattern: str) -> str:
    """A user type pattern as NATS tokens: `run.*` (trailing) → `run.>`; `*` mid-way is one token."""
    tokens = pattern.split(".")
    if not pattern or any(not t for t in tokens):
        raise InvalidEventError(f"type pattern {pattern!r} has an empty token")
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        if token == ">" and not last:
            raise InvalidEventError(f"type pattern {pattern!r}: '>' may only be the last token")
        if token not in ("*", ">") and not _TYPE_TOKEN.match(token):
            raise InvalidEventError(
                f"type pattern {pattern!r}: token {token!r} must be a lowercase word, '*' or '>'"
            )
    if tokens[-1] == "*":
        tokens[-1] = ">"
    return ".".join(tokens)


def filter_subjects(types: list[str] | tuple[str, ...], subject: str) -> list[str]:
    """NATS filter subjects for an EventFilter (one per type pattern)."""
    resource = subject_tokens(subject, allow_wildcard=True) if subject else "*.*"
    patterns = [type_pattern_tokens(t) for t in types] or [">"]
    return sorted({f"{SUBJECT_PREFIX}.{resource}.{p}" for p in patterns})


def stream_config(settings: Settings) -> api.StreamConfig:
    """The one stream every event lives in: file storage, limits from settings, dedup window."""
    return api.StreamConfig(
        name=settings.EVENTS_STREAM,
        subjects=[f"{SUBJECT_PREFIX}.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=settings.EVENTS_MAX_AGE_SECONDS or None,
        max_bytes=settings.EVENTS_MAX_BYTES,
        duplicate_window=settings.EVENTS_DEDUP_WINDOW_SECONDS,
        discard=api.DiscardPolicy.OLD,
    )


def make_event(
    event_type: str,
    subject: str = "",
    data: Mapping[str, Any] | None = None,
    *,
    source: str,
    event_id: str | None = None,
    correlation_id: str = "",
) -> events_pb2.Event:
    """A new envelope with id and time filled in."""
    event = events_pb2.Event(
        id=event_id or uuid.uuid4().hex,
        type=event_type,
        source=source,
        subject=subject,
        correlation_id=correlation_id,
    )
    event.time.GetCurrentTime()
    if data:
        event.data.update(dict(data))
    return event


def decode_event(payload: bytes, sequence: int) -> events_pb2.Event:
    """A stored message back into an Event with its stream sequence."""
    event = events_pb2.Event.FromString(payload)
    event.sequence = sequence
    return event


def event_data(event: events_pb2.Event) -> dict[str, Any]:
    """An event's data as plain Python."""
    return json_format.MessageToDict(event.data) if event.HasField("data") else {}


class EventLog:
    """Publishes events to the stream and waits for JetStream's acknowledgement."""

    def __init__(self, nc: NATS, settings: Settings, source: str) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=settings.EVENTS_PUBLISH_TIMEOUT_SECONDS)
        self.settings = settings
        self.source = source

    async def ensure_stream(self) -> None:
        """Create the stream, or bring its limits in line with settings."""
        config = stream_config(self.settings)
        try:
            await self.js.stream_info(config.name or "")
        except Exception:  # noqa: BLE001 - not found: create it
            await self.js.add_stream(config)
        else:
            await self.js.update_stream(config)

    async def publish_event(self, event: events_pb2.Event) -> events_pb2.Event:
        """Store `event`; returns it with its sequence. Raises when JetStream did not store it."""
        payload = event.SerializeToString()
        if len(payload) > self.settings.EVENTS_MAX_DATA_BYTES:
            raise InvalidEventError(
                f"event is {len(payload)} bytes; the limit is {self.settings.EVENTS_MAX_DATA_BYTES}"
            )
        ack = await self.js.publish(
            nats_subject(event.type, event.subject),
            payload,
            stream=self.settings.EVENTS_STREAM,
            headers={"Nats-Msg-Id": event.id},
        )
        stored = events_pb2.Event()
        stored.CopyFrom(event)
        stored.sequence = ack.seq
        return stored

    async def publish(
        self,
        event_type: str,
        subject: str = "",
        data: Mapping[str, Any] | None = None,
        *,
        event_id: str | None = None,
        correlation_id: str = "",
    ) -> events_pb2.Event:
        """Build and store an event from this service."""
        event = make_event(
            event_type,
            subject,
            data,
            source=self.source,
            event_id=event_id,
            correlation_id=correlation_id,
        )
        return await self.publish_event(event)
