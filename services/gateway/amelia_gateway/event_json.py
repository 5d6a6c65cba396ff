"""An `Event` as the gateway's JSON text, written directly: the bytes `transcode.to_json_text`
gives (`MessageToDict` + `json.dumps`), at a fraction of the cost.

Every event a socket receives goes through here once (the hub shares the text with every socket
of its filter). `MessageToDict` walks the message through descriptors and builds a dict that
`json.dumps` then walks again, and formats the time through a datetime each time: ~22% of the
gateway's CPU at 1,000 events/s to 100 sockets. This writes the same text in one pass, keeping
every rule of proto JSON as `MessageToDict` applies them, so the two agree byte for byte
(tests/gateway/test_unit_event_json.py checks them on a table of hostile events):

- field order: the fields that are set, by field number, then the unset ones without presence
  (`always_print_fields_with_no_presence`) with their default: an empty string, "0", then the
  unset message fields (`time`, `data`) as null (`to_json`'s emit-unpopulated);
- `sequence` (uint64) as a quoted decimal; `time` as RFC 3339 with 0, 3, 6 or 9 fractional
  digits; `data` (a Struct) as its JSON, whole numbers as integers (`42`, not 42.0:
  `json_numbers.number_text`, as `to_json` writes them), keys in the map's own order;
- strings escaped as `json.dumps(..., ensure_ascii=False)` does (the same C function).

What proto JSON refuses (NaN or Infinity in `data`, a time out of range) is left to
`to_json_text`, which raises as before.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from json.encoder import encode_basestring
from typing import Any

from amelia.v1 import events_pb2
from amelia_common.json_numbers import number_text
from amelia_gateway.transcode import to_json_text

# google.protobuf's Timestamp range (0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z).
_FIRST_SECOND = -62_135_596_800
_LAST_SECOND = 253_402_300_799
_EPOCH = dt.datetime(1970, 1, 1)


class _UnusualError(Exception):
    """What proto JSON refuses; `to_json_text` raises its own error for it."""


def event_json(event: events_pb2.Event) -> str:
    """`to_json_text(event)`, the same text, written directly."""
    try:
        return _event(event)
    except _UnusualError:
        return to_json_text(event)


def _event(event: events_pb2.Event) -> str:
    set_fields: list[str] = []
    defaults: list[str] = []
    for name, value in (
        ("id", event.id),
        ("type", event.type),
        ("source", event.source),
        ("subject", event.subject),
    ):
        (set_fields if value else defaults).append(f'"{name}":{encode_basestring(value)}')
    unset: list[str] = []  # message fields, written null after the defaults (`to_json`'s order)
    if event.HasField("time"):
        set_fields.append(f'"time":"{_time(event.time.seconds, event.time.nanos)}"')
    else:
        unset.append('"time":null')
    if event.HasField("data"):
        parts: list[str] = ['"data":']
        _struct(event.data, parts)
        set_fields.append("".join(parts))
    else:
        unset.append('"data":null')
    (set_fields if event.sequence else defaults).append(f'"sequence":"{event.sequence}"')
    if event.correlation_id:
        set_fields.append(f'"correlationId":{encode_basestring(event.correlation_id)}')
    else:
        defaults.append('"correlationId":""')
    return "{" + ",".join(set_fields + defaults + unset) + "}"


def _time(seconds: int, nanos: int) -> str:
    """`Timestamp.ToJsonString()`: the second's text (remembered) and 0, 3, 6 or 9 digits."""
    if not 0 <= nanos < 1_000_000_000:
        raise _UnusualError
    whole = _second(seconds)
    if nanos == 0:
        return whole + "Z"
    if nanos % 1_000_000 == 0:
        return f"{whole}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{whole}.{nanos // 1000:06d}Z"
    return f"{whole}.{nanos:09d}Z"


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    """A second's `YYYY-MM-DDTHH:MM:SS` (events of a burst share a few seconds)."""
    if not _FIRST_SECOND <= seconds <= _LAST_SECOND:
        raise _UnusualError
    within = seconds % 86_400
    return (_EPOCH + dt.timedelta((seconds - within) // 86_400, within)).isoformat()


def _struct(struct: Any, parts: list[str]) -> None:
    parts.append("{")
    first = True
    for key, value in struct.fields.items():
        if not first:
            parts.append(",")
        first = False
        parts.append(encode_basestring(key))
        parts.append(":")
        _value(value, parts)
    parts.append("}")


def _value(value: Any, parts: list[str]) -> None:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        parts.append(encode_basestring(value.string_value))
    elif kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise _UnusualError
        parts.append(number_text(number))
    elif kind == "bool_value":
        parts.append("true" if value.bool_value else "false")
    elif kind == "struct_value":
        _struct(value.struct_value, parts)
    elif kind == "list_value":
        parts.append("[")
        for i, item in enumerate(value.list_value.values):
            if i:
                parts.append(",")
            _value(item, parts)
        parts.append("]")
    else:  # null_value, or no kind set (proto JSON writes null)
        parts.append("null")
