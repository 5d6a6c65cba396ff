"""The envelope and the subject scheme: validating, encoding and addressing events.

Subject scheme (the only place it is defined; docs/events.md explains it):

    amelia.events.<collection>.<resource-id>.<type>

e.g. `amelia.events.runs.4f1c….run.token` for `subject="runs/4f1c…"`, `type="run.token"`.
Events without a subject use `_._`. Each message's payload is a serialized `amelia.v1.Event`
(without its sequence: JetStream assigns that), and its `Nats-Msg-Id` header is the event id,
so a retried publish is stored once within the dedup window.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import os
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import DecodeError
from nats.js import api

from amelia.v1 import events_pb2
from amelia_common.errors import (
    NATS,
    AlreadyExistsError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
    struct_problem,
)
from amelia_common.event_names import (
    InvalidEventError,
    filter_tokens,
    subject_tokens,
    validate_type,
)
from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.eventlog")

SUBJECT_PREFIX = "amelia.events"
_EVENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_SOURCE_LENGTH = 128
MAX_CORRELATION_ID_LENGTH = 128

# Event type families only the mesh's services publish (through `EventLog`, never PublishEvent):
# a client must not be able to forge a run's end or a document's indexing.
MESH_TYPE_FAMILIES = ("run", "agent", "workflow", "document", "cron")
# The dedup namespace of ids a client chose (the `Nats-Msg-Id` of a PublishEvent is
# `client:<id>`), so no client id can collide with an id a service uses, like `<run-id>:end`.
CLIENT_ID_NAMESPACE = "client:"

# Stream sequences are uint64 in JetStream; one past the last must still fit.
MAX_SEQUENCE = 2**63 - 1
# JetStream keeps times as int64 nanoseconds since 1970: the range a start time can name.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LAST_TIME = EPOCH + dt.timedelta(microseconds=(2**63 - 1) // 1000)
# google.protobuf.Timestamp's valid range: 0001-01-01 .. 9999-12-31.
_MIN_TIMESTAMP_SECONDS, _MAX_TIMESTAMP_SECONDS = -62135596800, 253402300799

# A stored message that is not a readable event comes back as this type (see decode_event).
UNDECODABLE_TYPE = "system.undecodable"
_RAW_PREVIEW_BYTES = 16 * 1024


class EventLogUnavailableError(UnavailableError, ConnectionError):
    """The log could not store (or read) an event in time: NATS is unreachable or overloaded.

    A publish that raised this was not acknowledged; retrying it with the same event id is safe
    (JetStream deduplicates by id within the dedup window).
    """

    def __init__(self, detail: str) -> None:
        super().__init__(NATS, detail)


class TooManyReadersError(ResourceExhaustedError):
    """RESOURCE_EXHAUSTED: JetStream refused a reader's consumer because the stream (or the
    account) holds as many consumers as it may ("maximum consumers limit reached"). Not an
    outage: NATS answered, and trying again at once meets the same limit until readers close."""


# A batch's ReusedIdError names this many of its refused events.
_NAMED_REFUSALS = 3


class ReusedIdError(AlreadyExistsError):
    """ALREADY_EXISTS: a client's event id is already stored with other content, so the event
    was not stored (`EventLog.stored_before`). `what` says that of one event; `advice` what to
    do, which differs for a batch, whose other events were written before NATS could tell."""

    def __init__(
        self,
        what: str,
        advice: str = "publish it with a new id (the same content sent again returns the stored "
        "event)",
    ) -> None:
        super().__init__(f"{what}; {advice}")
        self.what = what

    @classmethod
    def in_batch(cls, refused: list[ReusedIdError], stored: int) -> ReusedIdError:
        """The error of a batch in which `refused` were refused and `stored` events stored (the
        first few named: a status message must fit in gRPC's 8 KiB of trailers)."""
        what = "; ".join(error.what for error in refused[:_NAMED_REFUSALS])
        if len(refused) > _NAMED_REFUSALS:
            what += f"; and {len(refused) - _NAMED_REFUSALS} more events of the batch likewise"
        if not stored:
            return cls(what) if len(refused) == 1 else cls(what, "publish them with new ids")
        others = "other event is" if stored == 1 else f"{stored} other events are"
        return cls(
            what,
            f"the batch's {others} stored: send the batch again with new ids for the refused "
            "events and every event comes back as stored, each stored once",
        )


# --------------------------------------------------------------------------- subject scheme


@functools.lru_cache(maxsize=4096)
def nats_subject(event_type: str, subject: str) -> str:
    """Where an event with this type and subject is stored (remembered: a run's events share
    a few types and one subject, and each of its events asks)."""
    validate_type(event_type)
    return f"{SUBJECT_PREFIX}.{subject_tokens(subject)}.{event_type}"


def filter_subjects(types: list[str] | tuple[str, ...], subject: str) -> list[str]:
    """NATS filter subjects for an EventFilter (one per type pattern, overlaps removed).

    Overlapping filters (e.g. `run.*` and `run.token`) are refused by JetStream, so a pattern
    another pattern already covers is dropped; the result matches the same events.
    """
    resource, patterns = filter_tokens(types, subject)
    kept = [p for p in patterns if not any(o != p and _covers(o, p) for o in patterns)]
    return sorted(f"{SUBJECT_PREFIX}.{resource}.{p}" for p in kept)


def _covers(general: str, specific: str) -> bool:
    """True when every subject matching `specific` also matches `general` (NATS wildcards)."""
    g, s = general.split("."), specific.split(".")
    for i, token in enumerate(g):
        if token == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if token == "*":
            if s[i] == ">":
                return False
            continue
        if token != s[i]:
            return False
    return len(g) == len(s)


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
        num_replicas=settings.EVENTS_STREAM_REPLICAS,
        # None: the server's default, or what the stream was given (see EVENTS_MAX_CONSUMERS).
        max_consumers=settings.EVENTS_MAX_CONSUMERS or None,
    )


# --------------------------------------------------------------------------- envelope


def new_event_id() -> str:
    """A fresh event id: 32 random hex digits (as `uuid4().hex`, without building a UUID: an id
    per token adds up)."""
    return os.urandom(16).hex()


def stamp_now(ts: timestamp_pb2.Timestamp) -> None:
    """Set `ts` to now (`Timestamp.GetCurrentTime` goes through a datetime: several times the
    cost, per event)."""
    ts.seconds, ts.nanos = divmod(time.time_ns(), 1_000_000_000)


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
        id=event_id or new_event_id(),
        type=event_type,
        source=source,
        subject=subject,
        correlation_id=correlation_id,
    )
    stamp_now(event.time)
    if data:
        event.data.update(dict(data))
    return event


def validate_event(event: events_pb2.Event, max_bytes: int, *, data_checked: bool = False) -> bytes:
    """Check every field of an envelope about to be stored; returns its payload.

    `data_checked`: the caller built `event.data` from values it already passed through
    `check_json` (the run events of the agents service), so its walk is not done twice.
    Raises `InvalidEventError` naming the first problem.
    """
    validate_type(event.type)
    subject_tokens(event.subject)
    if not _EVENT_ID.match(event.id):
        raise InvalidEventError(
            f"event id {event.id!r} must be 1-128 characters of letters, digits, '.', '_', ':' "
            "or '-', starting with a letter or digit"
        )
    if len(event.source) > MAX_SOURCE_LENGTH:
        raise InvalidEventError(f"event source is longer than {MAX_SOURCE_LENGTH} characters")
    if len(event.correlation_id) > MAX_CORRELATION_ID_LENGTH:
        raise InvalidEventError(
            f"correlation_id is longer than {MAX_CORRELATION_ID_LENGTH} characters"
        )
    problem = content_problem(event, data=not data_checked)
    if problem is not None:
        raise InvalidEventError(problem)
    payload = event.SerializeToString()
    if len(payload) > max_bytes:
        raise InvalidEventError(
            f"event is {len(payload)} bytes once encoded; the limit is {max_bytes} "
            "(EVENTS_MAX_DATA_BYTES): store large payloads elsewhere and reference them"
        )
    _written.add(payload)
    return payload


def check_client_type(event_type: str) -> None:
    """Refuse, for a client's PublishEvent, a type only the mesh's services may publish."""
    family = event_type.split(".", 1)[0]
    if family in MESH_TYPE_FAMILIES:
        reserved = ", ".join(f"{f}.*" for f in MESH_TYPE_FAMILIES)
        raise PermissionDeniedError(
            f"event type {event_type!r} is published only by Amelia's services ({reserved}); "
            f"publish your own events under another name, e.g. 'app.{event_type}'"
        )


def timestamp_problem(ts: timestamp_pb2.Timestamp, field: str) -> str | None:
    """Why `ts` is not a valid google.protobuf.Timestamp (0001-01-01 .. 9999-12-31), or None."""
    if not (_MIN_TIMESTAMP_SECONDS <= ts.seconds <= _MAX_TIMESTAMP_SECONDS) or not (
        0 <= ts.nanos < 1_000_000_000
    ):
        return f"{field} is not a valid timestamp (0001-01-01 .. 9999-12-31)"
    return None


def content_problem(event: events_pb2.Event, *, data: bool = True) -> str | None:
    """Why a reader could not represent this event as JSON (NaN, Infinity, NUL, a time out of
    range, …), or None. The one rule for what is stored and what is read back: it runs on every
    event published and every event read, so it walks the envelope once, building nothing.
    `data=False` leaves out `event.data` (checked by its builder, see `validate_event`)."""
    if event.HasField("time"):
        problem = timestamp_problem(event.time, "event time")
        if problem is not None:
            return problem
    for name, text in (("source", event.source), ("correlation_id", event.correlation_id)):
        if "\x00" in text:
            return f"event {name} must not contain NUL characters"
    return struct_problem(event.data, "event data") if data else None


PREVIEW_CHARACTERS = 2000


def fit_data(data: Mapping[str, Any], max_bytes: int, *, where: str) -> dict[str, Any]:
    """`data` with its largest values cut until it fits in `max_bytes`.

    For events that carry a resource's content (a run's input or output, a huge token): the
    event must be stored whatever the content's size, and the whole value stays on the resource
    (`where` says how to get it). A value keeps its JSON type, so readers need no second shape:
    a string stays a string, its first PREVIEW_CHARACTERS characters, and a sibling
    `"<key>_truncated": {"characters": n, "size_bytes": n, "see": where}` says it was cut; any
    other value becomes
    `{"truncated": true, "size_bytes": n, "preview": "<first characters of its JSON>", "see": where}`.
    """

    def size(value: Any) -> int:
        return len(json.dumps(value, ensure_ascii=False, default=str).encode())

    fitted = dict(data)
    if _surely_fits(fitted, max_bytes):
        return fitted
    cut: set[str] = set()
    while fitted and size(fitted) > max_bytes:
        key = max(fitted, key=lambda k: size(fitted[k]))
        value = fitted[key]
        if key in cut or (isinstance(value, dict) and value.get("truncated") is True):
            break  # the largest value is already a preview: nothing left to shrink
        cut.add(key)
        if isinstance(value, str):
            fitted[key] = value[:PREVIEW_CHARACTERS]
            fitted[f"{key}_truncated"] = {
                "characters": len(value),
                "size_bytes": len(value.encode(errors="surrogatepass")),
                "see": where,
            }
            continue
        text = json.dumps(value, ensure_ascii=False, default=str)
        fitted[key] = {
            "truncated": True,
            "size_bytes": size(value),
            "preview": text[:PREVIEW_CHARACTERS],
            "see": where,
        }
    return fitted


# Bytes of JSON one character can take at most (`\u0000`); a key's or a scalar's overhead
# (quotes, separators, the longest float or 64-bit integer).
_JSON_BYTES_PER_CHARACTER = 6
_JSON_SCALAR_BYTES = 32


def _surely_fits(data: Mapping[str, Any], max_bytes: int) -> bool:
    """True when flat `data` (strings, numbers, booleans, None) is below `max_bytes` as JSON by
    an upper bound counted without encoding it: a run's token and node events, most of its
    events, skip `fit_data`'s encoding. False means "encode and see"."""
    bound = 2
    for key, value in data.items():
        bound += _JSON_SCALAR_BYTES + _JSON_BYTES_PER_CHARACTER * len(key)
        if isinstance(value, str):
            bound += _JSON_BYTES_PER_CHARACTER * len(value)
        elif not (value is None or isinstance(value, float) or _small_int(value)):
            return False
        if bound > max_bytes:
            return False
    return True


def _small_int(value: Any) -> bool:
    """An int (or bool) of at most 64 bits: at most 20 characters of JSON."""
    return isinstance(value, int) and value.bit_length() <= 64


_reported_undecodable: set[int] = set()


class _CheckedPayloads:
    """Stored payloads already found readable, by stream sequence: every reader of an event
    (100 StreamEvents subscribers of one run: 100 JetStream consumers, each delivering its own
    copy) checks it once per process, not once each. A hit needs the same bytes at the same
    sequence, so a recreated stream (sequences start again) is checked afresh. Bounded in
    entries and bytes; the oldest go first."""

    def __init__(self, max_entries: int = 8192, max_bytes: int = 8 * 1024 * 1024) -> None:
        self._payloads: OrderedDict[int, bytes] = OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    def __contains__(self, item: tuple[int, bytes]) -> bool:
        sequence, payload = item
        return self._payloads.get(sequence) == payload

    def add(self, sequence: int, payload: bytes) -> None:
        if len(payload) > self._max_bytes // 16:
            return  # rare large events: not worth holding
        old = self._payloads.pop(sequence, None)
        if old is not None:
            self._bytes -= len(old)
        self._payloads[sequence] = payload
        self._bytes += len(payload)
        while len(self._payloads) > self._max_entries or self._bytes > self._max_bytes:
            self._bytes -= len(self._payloads.popitem(last=False)[1])


_checked = _CheckedPayloads()


class _WrittenPayloads:
    """Payloads this process checked and serialized itself (`validate_event`), the recent ones:
    a reader in the same process — the agents service's StreamRun reading back the events its
    workers just published — takes them as readable without walking them again (the same bytes
    are the same event, checked by the same rules where it was built). Bounded in entries and
    bytes; the oldest go first."""

    def __init__(self, max_entries: int = 8192, max_bytes: int = 8 * 1024 * 1024) -> None:
        self._payloads: OrderedDict[bytes, None] = OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    def __contains__(self, payload: bytes) -> bool:
        return payload in self._payloads

    def add(self, payload: bytes) -> None:
        if payload in self._payloads:
            return
        self._payloads[payload] = None
        self._bytes += len(payload)
        while len(self._payloads) > self._max_entries or self._bytes > self._max_bytes:
            self._bytes -= len(self._payloads.popitem(last=False)[0])


_written = _WrittenPayloads()


def decode_event(payload: bytes | None, sequence: int, stored_on: str = "") -> events_pb2.Event:
    """A stored message back into an Event with its stream sequence.

    A message that is not a readable event (not an `amelia.v1.Event` — written by another tool
    or an old version — or data a JSON reader cannot take, such as NaN stored before it was
    refused) never makes the log unreadable: it comes back as a `system.undecodable` event at
    its sequence, with what could be recovered (the original type, the reason, the raw payload
    in base64), and is logged once per process. `stored_on` is the NATS subject it was stored on.
    An empty message is such a one, however it reaches us: a pull delivers its payload as
    `b""`, JetStream's direct get (`EventLog.get`, `last`) as None.
    """
    event: events_pb2.Event | None
    problem: str | None
    if payload is None:
        payload = b""
    try:
        event = events_pb2.Event.FromString(payload)
    except DecodeError as exc:
        event, problem = None, f"not an amelia.v1.Event ({exc})"
    else:
        if payload in _written or (sequence, payload) in _checked:
            event.sequence = sequence
            return event
        try:
            validate_type(event.type)
            problem = content_problem(event)
        except InvalidEventError as exc:
            problem = exc.message
        if problem is None:
            _checked.add(sequence, payload)
            event.sequence = sequence
            return event
    if sequence not in _reported_undecodable:
        if len(_reported_undecodable) >= 10_000:
            _reported_undecodable.clear()
        _reported_undecodable.add(sequence)
        log.warning("undecodable event in the log", sequence=sequence, reason=problem)
    return _placeholder(payload, sequence, stored_on, event, problem or "unreadable")


def _placeholder(
    payload: bytes,
    sequence: int,
    stored_on: str,
    event: events_pb2.Event | None,
    problem: str,
) -> events_pb2.Event:
    tokens = stored_on.split(".")
    stored_type = ".".join(tokens[4:]) if stored_on.startswith(SUBJECT_PREFIX + ".") else ""
    stored_subject = f"{tokens[2]}/{tokens[3]}" if stored_type and tokens[2] != "_" else ""
    original_type = event.type if event is not None else stored_type
    placeholder = events_pb2.Event(
        id=event.id
        if event is not None and _EVENT_ID.match(event.id)
        else f"undecodable-{sequence}",
        type=UNDECODABLE_TYPE,
        subject=stored_subject,
        sequence=sequence,
    )
    if event is not None and not timestamp_problem(event.time, "time"):
        placeholder.time.CopyFrom(event.time)
    placeholder.data.update(
        {
            "reason": problem,
            "original_type": original_type.replace("\x00", "\ufffd"),
            "payload_bytes": len(payload),
            "payload_base64": base64.b64encode(payload[:_RAW_PREVIEW_BYTES]).decode(),
            "payload_truncated": len(payload) > _RAW_PREVIEW_BYTES,
        }
    )
    return placeholder


def event_data(event: events_pb2.Event) -> dict[str, Any]:
    """An event's data as plain Python."""
    return json_format.MessageToDict(event.data) if event.HasField("data") else {}


# --------------------------------------------------------------------------- reading
