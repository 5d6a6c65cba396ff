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
from collections.abc import Iterable, Mapping
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

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
        json_format.ParseDict(dict(data), message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise invalid(f"{where}: {_clean(str(exc))}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise invalid(f"{where}: {_clean(str(exc))}") from None
    _check_finite(message, where)


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
    # json_format says 'Failed to parse x field: ...' with the full message type path; keep it,
    # it names the field, but drop the Python-specific noise, and cut the client's value short
    # (it quotes the value, which may be thousands of characters).
    return cut(text.replace("Message type ", "message ").strip())


def _query_scalar(field: FieldDescriptor, value: str, key: str) -> Any:
    """One query string value as the JSON value ParseDict expects for `field`."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        lowered = value.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0", ""):
            return False
        raise invalid(f"query parameter {key!r}: expected true or false, got {value!r}")
    if field.type == FieldDescriptor.TYPE_ENUM:
        if value.lstrip("-").isdigit():
            return int(value)
        if enum_type(field).values_by_name.get(value) is None:
            names = ", ".join(v.name for v in enum_type(field).values)
            raise invalid(f"query parameter {key!r}: {value!r} is not one of {names}")
        return value
    if field.type in _INT_TYPES:
        if not value.lstrip("-").isdigit():
            raise invalid(f"query parameter {key!r}: expected an integer, got {value!r}")
        return value
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        full_name = msg_type(field).full_name
        if full_name in WRAPPER_WKT:
            return _query_scalar(msg_type(field).fields_by_name["value"], value, key)
        return value
    return value


def query_settable(field: FieldDescriptor) -> bool:
    """Whether a field (a leaf) can be set from a query value."""
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return True
    name = msg_type(field).full_name
    return name in STRING_WKT or name in WRAPPER_WKT


def query_to_dict(
    descriptor: Descriptor, items: Iterable[tuple[str, str]], bound: set[str]
) -> dict[str, Any]:
    """Query pairs as a nested proto-JSON dict for `descriptor`, validating every key."""
    result: dict[str, Any] = {}
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
                raise invalid(f"unknown query parameter {key!r}")
            names.append(field.name)
            last = i == len(parts) - 1
            if ".".join(names) in bound:
                raise invalid(f"query parameter {key!r} is set by the path")
            if not last:
                if field.type != FieldDescriptor.TYPE_MESSAGE or is_repeated(field):
                    raise invalid(f"unknown query parameter {key!r}")
                if msg_type(field).full_name in STRING_WKT | WRAPPER_WKT:
                    raise invalid(f"unknown query parameter {key!r}")
                child = node.setdefault(field.name, {})
                if not isinstance(child, dict):
                    raise invalid(f"query parameter {key!r} conflicts with {part!r}")
                node = child
                desc = msg_type(field)
                continue
            if is_map(field):
                if map_key is None:
                    raise invalid(f"query parameter {key!r} is a map: use {path_text}[key]=value")
                value_field = msg_type(field).fields_by_name["value"]
                if not query_settable(value_field):
                    raise invalid(f"query parameter {key!r} cannot be set in the query string")
                entries = node.setdefault(field.name, {})
                entries[map_key] = _query_scalar(value_field, value, key)
                continue
            if map_key is not None:
                raise invalid(f"query parameter {key!r}: {path_text!r} is not a map")
            if not query_settable(field):
                raise invalid(
                    f"query parameter {key!r} cannot be set in the query string;"
                    " send it in a JSON body"
                )
            converted = _query_scalar(field, value, key)
            if is_repeated(field):
                node.setdefault(field.name, []).append(converted)
            elif field.name in node:
                raise invalid(f"query parameter {key!r} is given more than once")
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


def build_request(
    message_cls: type[Message],
    *,
    body: Mapping[str, Any] | None,
    query: Iterable[tuple[str, str]],
    path: Mapping[str, str],
) -> Message:
    """The request message for an HTTP request: body, then query, then path variables."""
    message = message_cls()
    if body:
        parse_into(message, body, "request body")
    query_items = list(query)
    if query_items:
        values = query_to_dict(cast(Descriptor, message_cls.DESCRIPTOR), query_items, set(path))
        from_query = message_cls()
        parse_into(from_query, values, "query string")
        message.MergeFrom(from_query)
    for field_path, value in path.items():
        set_path_field(message, field_path, value)
    return message


def to_json(message: Message) -> dict[str, Any]:
    """Proto JSON with lowerCamelCase names and unpopulated fields present (grpc-gateway's)."""
    data: dict[str, Any] = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True
    )
    return data


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
