"""HTTP request parts -> a protobuf request message, and protobuf -> JSON, as grpc-gateway does.

A request message is filled from three places, later ones winning: the JSON body (proto JSON,
lowerCamelCase or the proto's snake_case names), the query string (`pageSize=10`,
`filter.types=run.token&filter.types=run.started`, `metadataFilter[team]=infra`), and the path
(`/v1/runs/{run}` sets `name = "runs/{run}"`). Anything that does not fit the message's schema
is a 400 with a message that says which field and why, never a 500.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    OneofDescriptor,
)
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from amelia_common.json_numbers import EXACT_LIMIT, number_text, to_json
from amelia_gateway.errors import GatewayError, cut, invalid
from amelia_gateway.json_input import read_json_object

# Well-known types that proto JSON writes as a single string; they may be set from a query value.
STRING_WKT = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
}
# Wrapper types hold one scalar; a query value sets it.
WRAPPER_WKT = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}

_STRUCT_TYPES = {
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
}

_INT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}


def msg_type(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field (never None for one)."""
    descriptor = field.message_type
    assert descriptor is not None, field.full_name
    return descriptor


def enum_type(field: FieldDescriptor) -> EnumDescriptor:
    descriptor = field.enum_type
    assert descriptor is not None, field.full_name
    return descriptor


def is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def is_map(field: FieldDescriptor) -> bool:
    return bool(
        is_repeated(field)
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and msg_type(field).GetOptions().map_entry
    )


def find_field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    """A field by its proto name or its JSON (lowerCamelCase) name."""
    field = descriptor.fields_by_name.get(name)
    if field is not None:
        return field
    for candidate in descriptor.fields:
        if candidate.json_name == name:
            return candidate
    return None


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    if not raw.strip():
        return {}
    return read_json_object(raw, "request body")


def parse_into(message: Message, data: Mapping[str, Any], where: str) -> None:
    """Merge proto JSON `data` into `message`; a schema mismatch is a 400."""
    try:
        _check_values(cast(Descriptor, message.DESCRIPTOR), data, [])
        json_format.ParseDict(dict(data), message, ignore_unknown_fields=False)
    except _RefusedValueError as exc:
        raise invalid(str(exc) if where == "request body" else f"{where}: {exc}") from None
    except json_format.ParseError as exc:
        descriptor = cast(Descriptor, message.DESCRIPTOR)
        problem = parse_error_message(str(exc), descriptor, data, where)
        raise invalid(problem if where == "request body" else f"{where}: {problem}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise invalid(f"{where}: {_clean(str(exc))}") from None
    _check_finite(message, where)


class _RefusedValueError(ValueError):
    """A value json_format would take but must not: a Timestamp's UTC offset that is not a
    time of day, an integer a Struct would round (`_check_values`)."""


# The UTC offset ending an RFC 3339 time: json_format reads any two digits in it (`+99:00`
# as 99 hours, a time four days away), where RFC 3339 allows -23:59 to +23:59.
_OFFSET = re.compile(r"[+-](\d\d):(\d\d)$")


def _check_values(descriptor: Descriptor, data: Any, path: list[str]) -> None:
    """Refuse what json_format would take but change: a Timestamp in `data` whose offset has
    more than 23 hours or 59 minutes (with the message json_format's own refusals of a
    Timestamp get, `parse_error_message`), and an integer in free-form JSON (a Struct, Value or
    ListValue field) that a double cannot hold (`_check_exact`)."""
    if not isinstance(data, Mapping) or descriptor.full_name in _STRUCT_TYPES:
        return
    _check_spellings(descriptor, data, path)
    for key, value in data.items():
        field = find_field(descriptor, key) if isinstance(key, str) else None
        if field is None or field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        kind = msg_type(field).fields_by_name["value"] if is_map(field) else field
        if kind.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        items: list[tuple[str, Any]] = [(key, value)]
        one = not is_repeated(field)  # items are single values (json_format checks a list's)
        if is_map(field) and isinstance(value, Mapping):
            items, one = [(f"{key}.{k}", v) for k, v in value.items()], True
        elif is_repeated(field) and isinstance(value, list):
            items, one = [(f"{key}[{i}]", v) for i, v in enumerate(value)], True
        kind_name = msg_type(kind).full_name
        for name, item in items:
            if kind_name in _STRUCT_TYPES:
                _check_exact(item, ".".join([*path, name]))
            elif kind_name == "google.protobuf.Timestamp" and isinstance(item, str):
                if problem := _offset_problem(item, ".".join([*path, name])):
                    raise _RefusedValueError(problem)
            elif kind_name in STRING_WKT | WRAPPER_WKT:
                continue
            elif one and item is not None and not isinstance(item, Mapping):
                # json_format takes `[]` and `""` for a message (it iterates over them for
                # keys), and silently leaves the field empty; protojson refuses them.
                raise _RefusedValueError(
                    cut(f"{'.'.join([*path, name])}: must be a JSON object, got {_shown(item)}")
                )
            else:
                _check_values(msg_type(kind), item, [*path, name])


def _offset_problem(text: str, name: str) -> str:
    """Why the UTC offset ending RFC 3339 time `text` is refused (more than 23 hours or 59
    minutes), or ""."""
    offset = _OFFSET.search(text)
    if offset and (int(offset.group(1)) > 23 or int(offset.group(2)) > 59):
        return cut(
            f"{name}: must be {_MESSAGE_KINDS['google.protobuf.Timestamp']}, its UTC offset from "
            f"-23:59 to +23:59, got {_shown(text)}"
        )
    return ""


def _check_spellings(descriptor: Descriptor, data: Mapping[str, Any], path: list[str]) -> None:
    """Refuse one field given under both its names (`requestId` and `request_id`), as Go's
    protojson does ("duplicate field"): json_format takes both and keeps the one it reads last,
    so a retry that sends one of them alone changed the idempotency key without a word (QA s27
    F6). A key written twice is refused earlier, by the JSON reader (`json_input`)."""
    seen: dict[str, str] = {}
    for key in data:
        field = find_field(descriptor, key) if isinstance(key, str) else None
        if field is None:
            continue
        other = seen.setdefault(field.name, key)
        if other != key:
            where = ".".join(path) + ": " if path else ""
            raise _RefusedValueError(
                cut(f"{where}{other!r} and {key!r} name the same field: give it once")
            )


def read_timestamp(text: str, name: str) -> Timestamp:
    """An RFC 3339 time read by the rules of a Timestamp field in a body (json_format's, and
    `_offset_problem`), refused with the same message: for a time that is not a field of a
    request message (a WebSocket subscribe's `since`)."""
    if problem := _offset_problem(text, name):
        raise invalid(problem)
    stamp = Timestamp()
    try:
        stamp.FromJsonString(text)  # what json_format calls for a Timestamp field
    except (ValueError, OverflowError):
        kind = _MESSAGE_KINDS["google.protobuf.Timestamp"]
        raise invalid(cut(f"{name}: must be {kind}, got {_shown(text)}")) from None
    return stamp


def _check_exact(value: Any, path: str) -> None:
    """Refuse an integer in free-form JSON `value` that a double cannot hold: a Struct keeps
    every number as a double, so 9007199254740993 would be stored as 9007199254740992 without
    a word. Decimals (0.1, 1e30) pass: a JSON number with a fraction or an exponent is a
    double to every JSON reader. Walked without recursion, first offender first."""
    pending: list[tuple[Any, str]] = [(value, path)]
    while pending:
        item, where = pending.pop()
        if isinstance(item, dict):
            pending.extend(
                (v, f"{where}.{k}" if k.isidentifier() else f"{where}[{json.dumps(k)}]")
                for k, v in reversed(item.items())
            )
        elif isinstance(item, list):
            pending.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, int) and not isinstance(item, bool) and not _fits_double(item):
            text = str(item)
            shown = text if len(text) <= 24 else text[:20] + "…"
            try:
                becomes = f"would be stored as {number_text(float(item))}"
            except OverflowError:
                becomes = "is too large for a double"
            raise _RefusedValueError(
                cut(
                    f"{where}: the integer {shown} {becomes} (free-form JSON keeps numbers as"
                    " doubles); integers must be within ±2^53 to be kept exactly; send it as a"
                    " string"
                )
            )


def _fits_double(number: int) -> bool:
    """Whether a double holds `number` exactly: every integer within ±2^53, and beyond it only
    those that read back the same (2^60 does, 2^53 + 1 becomes 2^53)."""
    if -EXACT_LIMIT <= number <= EXACT_LIMIT:
        return True
    try:
        return int(float(number)) == number
    except OverflowError:
        return False


def _check_finite(message: Message, where: str, prefix: str = "") -> None:
    """Refuse NaN/Infinity in float/double fields: proto JSON spells them "NaN", "Infinity".

    Struct values are left out: their numbers come from JSON numbers, finite by `json_input`.
    """
    if message.DESCRIPTOR.full_name in _STRUCT_TYPES:
        return
    for field, value in message.ListFields():
        name = prefix + field.json_name
        kind = msg_type(field).fields_by_name["value"] if is_map(field) else field
        items = list(value.values()) if is_map(field) else value if is_repeated(field) else [value]
        if kind.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            if not all(math.isfinite(item) for item in items):
                raise invalid(f"{where}: {name} must be a finite number, not NaN or Infinity")
        elif kind.type == FieldDescriptor.TYPE_MESSAGE:
            for item in items:
                _check_finite(item, where, name + ".")


def _clean(text: str) -> str:
    """An exception's text on one line, a client's value in it cut short."""
    return cut(" ".join(text.replace("Message type ", "message ").split()))


# json_format's ParseError text: 'Failed to parse run field: Failed to parse input field: Struct
# must be in a dict which is hello at CreateRunRequest.run.input..', or 'Message type "x.Run" has
# no field named "colour" at "CreateRunRequest.run".\n Available Fields(except extensions): …'.
_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field: ")
_UNKNOWN_FIELD = re.compile(r'has no field named "(.*?)" at "(?P<at>[\w.\[\]]*)"')
# A oneof given more than one member ('Message type "amelia.v1.Run" should not have multiple
# "target" oneof fields at "CreateRunRequest.run".'): its own kind of mistake, not a wrong value.
_ONEOF_TWICE = re.compile(r'should not have multiple "(\w+)" oneof fields at "(?P<at>[\w.\[\]]*)"')
_INDEX = re.compile(r"(\w+)\[(\d+)\]")
# Where it failed, at the end of the text: ' at CreateAgentRequest.agent.temperature.'.
_AT_PATH = re.compile(r" at (?P<at>\w+(?:\.\w+(?:\[\d+\])?)*)\.*$")
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# A value the error's path does not lead to in the client's JSON (an item of a list it gave no
# index for): the message then says what the field must be, not what it got.
_UNSEEN = object()
_MESSAGE_KINDS = {
    "google.protobuf.Struct": "a JSON object",
    "google.protobuf.ListValue": "a JSON array",
    "google.protobuf.Timestamp": 'an RFC 3339 time like "2026-01-01T00:00:00Z"',
    "google.protobuf.Duration": 'a duration in seconds like "30s" or "1.5s"',
    "google.protobuf.FieldMask": 'a comma-separated list of field paths like "a,b.c"',
}


def parse_error_message(text: str, descriptor: Descriptor, data: Any, where: str) -> str:
    """json_format's ParseError `text` as one line that names the field (its JSON path) and says
    what it must be and what it got: `run.input: must be a JSON object, got "hello"`,
    `unknown field "colour" in CreateRunRequest body; its fields are run, requestId`."""
    names = _FAILED_FIELD.findall(text)
    unknown = _UNKNOWN_FIELD.search(text)
    oneof_twice = _ONEOF_TWICE.search(text)
    at = unknown or oneof_twice or _AT_PATH.search(text)
    at_path = at.group("at") if at else ""
    at_names = [_INDEX.sub(r"\1", n) for n in at_path.split(".")[1:]]
    if len(at_names) > len(names) and at_names[: len(names)] == names:
        names = at_names  # where a value failed inside the innermost field named (a float's)
    indexes = dict(_INDEX.findall(at_path))
    path: list[str] = []
    value: Any = data
    field: FieldDescriptor | None = None
    desc: Descriptor | None = descriptor
    for name in names:
        field = find_field(desc, name) if desc is not None else None
        value = value.get(name, _UNSEEN) if isinstance(value, dict) else _UNSEEN
        path.append(name)
        if isinstance(value, list) and name in indexes and int(indexes[name]) < len(value):
            value = value[int(indexes[name])]
            path[-1] += f"[{indexes[name]}]"
        desc = msg_type(field) if field is not None and field.message_type else None
    if unknown is not None and (not path or isinstance(value, dict)):
        owner = ".".join(path) or f"{descriptor.name} {where.removeprefix('request ')}"
        known = ", ".join(f.json_name for f in desc.fields) if desc is not None else ""
        return cut(
            f"unknown field {json.dumps(unknown.group(1))} in {owner}"
            + (f"; its fields are {known}" if known else "")
        )
    if oneof_twice is not None and desc is not None and isinstance(value, dict):
        return _oneof_twice_message(desc.oneofs_by_name[oneof_twice.group(1)], value, path)
    if field is None:
        return _clean(text)
    if isinstance(value, str) and (beyond := _duration_beyond(field, value, ".".join(path))):
        return beyond
    element = bool(path) and path[-1].endswith("]")
    got = "" if value is _UNSEEN else f", got {_shown(value)}"
    return cut(f"{'.'.join(path)}: must be {_expected(field, value, element)}{got}")


# A Duration's limit in protobuf (about 10,000 years), and the narrower ranges of the fields
# that have one: the agents service's (amelia_agents.convert.DURATION_RANGES, the same dict;
# test_gateway_exact_numbers checks it), so both say one thing for a run.timeout too long.
MAX_DURATION_SECONDS = 315_576_000_000
DURATION_RANGES = {"run.timeout": (1, 7 * 86_400), "agent.timeout": (1, 7 * 86_400)}
_DURATION_FORM = re.compile(r"-?0*(\d*)(?:\.\d+)?s")


def _duration_beyond(field: FieldDescriptor, value: str, path: str) -> str:
    """For a Duration in its form ("315576000001s") but beyond protobuf's limit, which
    json_format refuses as if it were not in the form: that it is out of range, with the
    field's own range where it has one (the agents service's words), else Duration's. "" else."""
    if field.message_type is None or msg_type(field).full_name != "google.protobuf.Duration":
        return ""
    form = _DURATION_FORM.fullmatch(value)
    digits = form.group(1) if form else ""
    if not (len(digits) > 12 or (digits and int(digits) > MAX_DURATION_SECONDS)):
        return ""
    if path in DURATION_RANGES:
        low, high = DURATION_RANGES[path]
        use = f"{low:g}s to {high:g}s ({high / 86_400:g} days)"
    else:
        use = f"-{MAX_DURATION_SECONDS}s to {MAX_DURATION_SECONDS}s (a Duration's limit)"
    return cut(f"{path} {cut(value, 60)} is out of range: use {use}")


def _oneof_twice_message(oneof: OneofDescriptor, value: dict[str, Any], path: list[str]) -> str:
    """`run: only one of agent, workflow may be set, got both` (the members given, when the
    oneof has more than two)."""
    members = [f.json_name for f in oneof.fields]
    json_names = {spelling: f.json_name for f in oneof.fields for spelling in (f.name, f.json_name)}
    given = [json_names[key] for key in value if value[key] is not None and key in json_names]
    got = "both" if len(members) == 2 else ", ".join(given[:-1]) + " and " + given[-1]
    where = ".".join(path) + ": " if path else ""
    return cut(f"{where}only one of {', '.join(members)} may be set, got {got}")


def _expected(field: FieldDescriptor, value: Any, element: bool) -> str:
    """What a JSON value for `field` must be (for one of its items when `element`)."""
    if _is_string_map(field):  # numbers and booleans are taken as text (_map_scalars)
        return "a JSON object, each value a string, a number or true/false"
    if is_map(field):
        value_field = msg_type(field).fields_by_name["value"]
        return "a JSON object, each value " + _expected(value_field, None, True)
    if is_repeated(field) and not element:
        if not isinstance(value, list):
            return "a JSON array"
        return "a JSON array, each item " + _expected(field, None, True)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = msg_type(field).full_name
        if name in WRAPPER_WKT:
            return _expected(msg_type(field).fields_by_name["value"], value, True)
        return _MESSAGE_KINDS.get(name, "a JSON object")
    if field.type == FieldDescriptor.TYPE_ENUM:
        return "one of " + ", ".join(v.name for v in enum_type(field).values)
    if field.type in _INT_RANGES:
        low, high = _INT_RANGES[field.type]
        return f"an integer from {low} to {high}"
    return {
        FieldDescriptor.TYPE_BOOL: "true or false",
        FieldDescriptor.TYPE_STRING: "a string",
        FieldDescriptor.TYPE_BYTES: "base64 text",
        FieldDescriptor.TYPE_DOUBLE: "a number",
        FieldDescriptor.TYPE_FLOAT: "a number",
    }.get(field.type, "another value")


def _shown(value: Any) -> str:
    """A client's JSON value in an error message, cut short."""
    return cut(json.dumps(value, ensure_ascii=False), 60)


def _query_scalar(
    field: FieldDescriptor, value: str, key: str, what: str = "query parameter"
) -> Any:
    """One query string value (or form field: `what`) as the JSON value ParseDict expects for
    `field`."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        lowered = value.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0", ""):
            return False
        raise invalid(f"{what} {key!r}: expected true or false, got {value!r}")
    if field.type == FieldDescriptor.TYPE_ENUM:
        if value.lstrip("-").isdigit():
            return int(value)
        if enum_type(field).values_by_name.get(value) is None:
            names = ", ".join(v.name for v in enum_type(field).values)
            raise invalid(f"{what} {key!r}: {value!r} is not one of {names}")
        return value
    if field.type in _INT_TYPES:
        if not value.lstrip("-").isdigit():
            raise invalid(
                f"{what} {key!r}: must be {_expected(field, value, True)}, got {_shown(value)}"
            )
        return value
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        full_name = msg_type(field).full_name
        if full_name in WRAPPER_WKT:
            return _query_scalar(msg_type(field).fields_by_name["value"], value, key, what)
        return value
    return value


def query_settable(field: FieldDescriptor) -> bool:
    """Whether a field (a leaf) can be set from a query value."""
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return True
    name = msg_type(field).full_name
    return name in STRING_WKT or name in WRAPPER_WKT


def query_to_dict(
    descriptor: Descriptor,
    items: Iterable[tuple[str, str]],
    bound: set[str],
    *,
    what: str = "query parameter",
    json_value: Callable[[str, str], Any] | None = None,
) -> dict[str, Any]:
    """Query pairs as a nested proto-JSON dict for `descriptor`, validating every key: a field
    given twice (even with the same value) is a 400, as is one the path sets. Multipart form
    fields go through here too (`what` = "form field"), so an upload's `filePath` sent twice is
    refused as a query's is; `json_value(text, key)` reads the value of a message field no text
    can set (a form's `metadata`, a JSON object) instead of refusing it."""
    result: dict[str, Any] = {}
    # The first key that named each field (by its proto path): a field may be given again
    # (a repeated one, a map's other entries) only under the same spelling (`_check_spellings`).
    spelt: dict[str, tuple[str, str]] = {}
    for key, value in items:
        map_key: str | None = None
        path_text = key
        if key.endswith("]") and "[" in key:
            path_text, _, rest = key.partition("[")
            map_key = rest[:-1]
        parts = path_text.split(".")
        node = result
        desc = descriptor
        names: list[str] = []
        for i, part in enumerate(parts):
            field = find_field(desc, part)
            if field is None:
                raise invalid(f"unknown {what} {key!r}")
            names.append(field.name)
            last = i == len(parts) - 1
            if ".".join(names) in bound:
                raise invalid(f"{what} {key!r} is set by the path")
            first_key, first_part = spelt.setdefault(".".join(names), (key, part))
            if first_part != part:
                raise invalid(
                    f"{what}s {first_key!r} and {key!r} name the same field: give it once"
                )
            if not last:
                if field.type != FieldDescriptor.TYPE_MESSAGE or is_repeated(field):
                    raise invalid(f"unknown {what} {key!r}")
                if msg_type(field).full_name in STRING_WKT | WRAPPER_WKT:
                    raise invalid(f"unknown {what} {key!r}")
                child = node.setdefault(field.name, {})
                if not isinstance(child, dict):
                    raise invalid(f"{what} {key!r} conflicts with {part!r}")
                node = child
                desc = msg_type(field)
                continue
            if is_map(field):
                if map_key is None:
                    raise invalid(f"{what} {key!r} is a map: use {path_text}[key]=value")
                value_field = msg_type(field).fields_by_name["value"]
                if not query_settable(value_field):
                    raise invalid(f"{what} {key!r} cannot be set in the query string")
                entries = node.setdefault(field.name, {})
                if map_key in entries:
                    raise invalid(f"{what} {key!r} is given more than once")
                entries[map_key] = _query_scalar(value_field, value, key, what)
                continue
            if map_key is not None:
                raise invalid(f"{what} {key!r}: {path_text!r} is not a map")
            if query_settable(field):
                converted = _query_scalar(field, value, key, what)
            elif json_value is not None and not is_repeated(field):
                converted = json_value(value, key)
            else:
                raise invalid(
                    f"{what} {key!r} cannot be set in the query string; send it in a JSON body"
                )
            if is_repeated(field):
                node.setdefault(field.name, []).append(converted)
            elif field.name in node:
                raise invalid(f"{what} {key!r} is given more than once")
            else:
                node[field.name] = converted
    return result


def set_path_field(message: Message, path: str, value: str) -> None:
    """Set a (possibly nested, e.g. `agent.name`) string field from a path variable."""
    *parents, leaf = path.split(".")
    target = message
    for part in parents:
        target = getattr(target, part)
    setattr(target, leaf, value)


def check_query_beside_body(
    descriptor: Descriptor,
    body_field: str,
    body: Mapping[str, Any],
    items: Iterable[tuple[str, str]],
) -> None:
    """What the query string may set on a route with a JSON body. `body_field` "*": nothing
    (the body is the whole request). A field (`agent`, grpc-gateway's `body: "agent"`): the
    request's other top-level fields a query value can set (scalars, enums, lists of them), as
    grpc-gateway takes them: `POST /v1/agents?agentId=x`, `POST /v1/runs?requestId=k`; a field
    set both in the query and in the body is refused."""
    settable = {
        f.name: f
        for f in descriptor.fields
        if f.type != FieldDescriptor.TYPE_MESSAGE and body_field != "*"
    }
    in_body = {f.name for key in body if (f := find_field(descriptor, key)) is not None}
    for key, _ in items:
        field = find_field(descriptor, key)
        if field is None or field.name not in settable:
            allowed = ", ".join(f.json_name for f in settable.values())
            raise invalid(
                f"unknown query parameter {key!r}: this route takes "
                + (
                    f"its fields from the JSON body except {allowed}"
                    if allowed
                    else "its fields from the JSON body"
                )
            )
        if field.name in in_body:
            raise invalid(f"{key!r} is given both in the query string and in the JSON body")


def build_request(
    message_cls: type[Message],
    *,
    body: Mapping[str, Any] | None,
    query: Iterable[tuple[str, str]],
    path: Mapping[str, str],
    body_field: str = "",
) -> Message:
    """The request message for an HTTP request: body, then query, then path variables. On a
    route with a body (`body_field`), the query may set only what `check_query_beside_body`
    lets it."""
    message = message_cls()
    descriptor = cast(Descriptor, message_cls.DESCRIPTOR)
    query_items = list(query)
    if body_field and query_items:
        check_query_beside_body(descriptor, body_field, body or {}, query_items)
    if body:
        parse_into(
            message, _map_scalars(descriptor, _field_masks(descriptor, body)), "request body"
        )
    if query_items:
        values = query_to_dict(descriptor, query_items, set(path))
        from_query = message_cls()
        try:
            parse_into(from_query, values, "query string")
        except GatewayError:
            _refuse_query_parameter(message_cls, query_items, set(path))
            raise
        message.MergeFrom(from_query)
    for field_path, value in path.items():
        _check_path_agrees(message, field_path, value)
        set_path_field(message, field_path, value)
    return message


def _check_path_agrees(message: Message, path: str, value: str) -> None:
    """Refuse a body that names another resource than the path (`POST /v1/runs/A:cancel` with
    `{"name": "runs/B"}`, a cron for thread U posted to `/v1/threads/T/crons`): grpc-gateway
    lets the path win without a word, so the client's mistake acted on a resource it did not
    mean (QA s27 L7). The same value in both is fine."""
    *parents, leaf = path.split(".")
    target = message
    json_path: list[str] = []
    for part in parents:
        json_path.append(target.DESCRIPTOR.fields_by_name[part].json_name)
        if not target.HasField(part):
            return
        target = getattr(target, part)
    json_path.append(target.DESCRIPTOR.fields_by_name[leaf].json_name)
    given = getattr(target, leaf)
    if given and given != value:
        raise invalid(
            cut(
                f"{'.'.join(json_path)} {_shown(given)} in the request body differs from"
                f" {_shown(value)} in the path: leave it out of the body, or give the same"
            )
        )


# A value's JSON path at the start of a parse error: `page_size: must be …`, `filter.types[1]: …`.
_PROBLEM_PATH = re.compile(r"^[\w.\[\]]+: ")


def _refuse_query_parameter(
    message_cls: type[Message], items: list[tuple[str, str]], bound: set[str]
) -> None:
    """Raise the error of the first query parameter that does not fit, named as the client
    wrote it (`query parameter 'pageSize': must be …`), as the query's own checks name it."""
    descriptor = cast(Descriptor, message_cls.DESCRIPTOR)
    for key, value in items:
        try:
            parse_into(message_cls(), query_to_dict(descriptor, [(key, value)], bound), "")
        except GatewayError as exc:
            problem = _PROBLEM_PATH.sub("", exc.message.removeprefix(": "), count=1)
            raise invalid(f"query parameter {key!r}: {problem}") from None


# lowerCamelCase -> snake_case, one path segment at a time (`maxTokens` -> `max_tokens`).
_UPPER = re.compile(r"[A-Z]")


def _field_masks(descriptor: Descriptor, body: Mapping[str, Any]) -> Mapping[str, Any]:
    """`body` with its update masks (a `repeated string ..._mask` field of the request, as in
    UpdateAgentRequest) in the form the services read: a list of snake_case paths. A client may
    send the FieldMask's proto JSON form, as grpc-gateway takes it — one string of
    comma-separated lowerCamelCase paths (`"maxTokens,displayName"`) — or a list, of
    lowerCamelCase or snake_case paths."""
    changed: dict[str, Any] | None = None
    for field in descriptor.fields:
        if not (
            field.name.endswith("_mask")
            and is_repeated(field)
            and field.type == FieldDescriptor.TYPE_STRING
        ):
            continue
        for key in {field.json_name, field.name}:
            value = body.get(key)
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, list):
                changed = changed if changed is not None else dict(body)
                changed[key] = [
                    _UPPER.sub(lambda m: "_" + m.group().lower(), path)
                    if isinstance(path, str)
                    else path
                    for path in value
                ]
    return changed if changed is not None else body


def _map_scalars(descriptor: Descriptor, body: Mapping[str, Any]) -> Mapping[str, Any]:
    """`body` with the numbers and booleans in its string maps (every `metadata_filter`) as
    their JSON text: `{"metadataFilter": {"n": 1}}` asks for `n` = "1", which the services
    match against a metadata value as text and, for a number, as a number (LangGraph's
    threads/search takes any JSON value there). The query string and the CLI send the same text
    (`metadataFilter[n]=1`, `--metadata n=1`). A map with a null, an object or an array in it is
    left as the client wrote it, and refused so, naming the field."""
    changed: dict[str, Any] | None = None
    for field in descriptor.fields:
        if not _is_string_map(field):
            continue
        for key in {field.json_name, field.name}:
            entries = body.get(key)
            if isinstance(entries, dict) and all(
                isinstance(v, (str, bool, int, float)) for v in entries.values()
            ):
                changed = changed if changed is not None else dict(body)
                changed[key] = {k: _as_text(v) for k, v in entries.items()}
    return changed if changed is not None else body


def _is_string_map(field: FieldDescriptor) -> bool:
    value = msg_type(field).fields_by_name["value"] if is_map(field) else None
    return value is not None and value.type == FieldDescriptor.TYPE_STRING


def _as_text(value: str | float) -> str:
    """A string as it is; a boolean or a number as its JSON text (`true`, `1`, `0.5`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else number_text(value)


def to_json_text(message: Message) -> str:
    """`to_json` as compact JSON text."""
    return json.dumps(to_json(message), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def to_json_bytes(message: Message) -> bytes:
    """`to_json_text` as a UTF-8 response body."""
    return to_json_text(message).encode()


__all__ = [
    "GatewayError",
    "build_request",
    "parse_json_body",
    "query_to_dict",
    "to_json",
    "to_json_text",
]
