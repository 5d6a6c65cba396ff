"""Whole numbers written as integers in proto JSON, as grpc-gateway (Go's protojson) writes them.

A google.protobuf.Struct holds every number as a double, so LangGraph's `step` 6 or an event's
`attempt` 1 comes back as 6.0; Python's json_format prints `6.0` where protojson prints `6`.
Every JSON a client reads (the gateway's responses and events, the CLI's --json) goes through
here: a double that is a whole number within ±2^53 (where every integer is exact) is written as
an integer. A typed `double` field of 1.0 becomes 1 too, as protojson writes it.
"""

from __future__ import annotations

import json
import math
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

# Beyond this a double no longer holds every integer: 2**53 + 1 reads back as 2**53.
EXACT_LIMIT = 2**53


def whole_number(number: float) -> int | float:
    """`number` as an int when it is a whole number within ±2^53, else unchanged (-0.0 too:
    protojson writes -0, and an int would lose the sign)."""
    if (
        number.is_integer()
        and -EXACT_LIMIT <= number <= EXACT_LIMIT
        and (number or math.copysign(1.0, number) > 0)
    ):
        return int(number)
    return number


def number_text(number: float) -> str:
    """A finite double as proto JSON text: `6`, `0.5`, `1e+300` (json.dumps' form otherwise)."""
    return repr(whole_number(number))


def whole_numbers(value: Any) -> Any:
    """Plain JSON `value` (dicts, lists, scalars) with its whole floats as integers."""
    if isinstance(value, float):
        return whole_number(value)
    if isinstance(value, dict):
        return {key: whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole_numbers(item) for item in value]
    return value


def message_dict(message: Message, **options: Any) -> Any:
    """`json_format.MessageToDict(message, **options)` with whole numbers as integers."""
    return whole_numbers(json_format.MessageToDict(message, **options))


def message_text(message: Message, indent: int | None = 2) -> str:
    """`json_format.MessageToJson(message)` with whole numbers as integers."""
    return json.dumps(message_dict(message), indent=indent, ensure_ascii=False, allow_nan=False)


def to_json(message: Message) -> dict[str, Any]:
    """Proto JSON with lowerCamelCase names and every field present, as grpc-gateway's
    `EmitUnpopulated` writes it: scalars with their default, lists `[]`, maps `{}`, and an unset
    message field `null` (a client reads `run.output` without checking it exists). Fields of a
    oneof are left out when unset, as protojson does. Whole numbers are integers (`"step": 6`,
    not 6.0), as protojson writes them (`json_numbers`)."""
    data: dict[str, Any] = message_dict(message, always_print_fields_with_no_presence=True)
    _add_unset_messages(message, data)
    return data


def _add_unset_messages(message: Message, data: dict[str, Any]) -> None:
    """Write the unset message fields of `message` (and of the messages in it) as null into its
    proto JSON `data`; `always_print_fields_with_no_presence` leaves them out."""
    for field in cast(Descriptor, message.DESCRIPTOR).fields:
        if field.type != FieldDescriptor.TYPE_MESSAGE or field.containing_oneof is not None:
            continue
        name = field.json_name
        if _is_map(field):
            value_field = _message_type(field).fields_by_name["value"]
            if _has_fields(value_field):
                for key, item in getattr(message, field.name).items():
                    _add_unset_messages(item, data[name][str(key)])
        elif field.is_repeated:
            if _has_fields(field):
                for item, item_data in zip(getattr(message, field.name), data[name], strict=True):
                    _add_unset_messages(item, item_data)
        elif not message.HasField(field.name):
            data[name] = None
        elif _has_fields(field):
            _add_unset_messages(getattr(message, field.name), data[name])


def _has_fields(field: FieldDescriptor) -> bool:
    """Whether a message field's JSON is an object of its fields (not a well-known type's
    own form: Struct, Timestamp, wrappers, …)."""
    return field.type == FieldDescriptor.TYPE_MESSAGE and not _message_type(
        field
    ).full_name.startswith("google.protobuf.")


def _is_map(field: FieldDescriptor) -> bool:
    return bool(
        field.is_repeated
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and _message_type(field).GetOptions().map_entry
    )


def _message_type(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field (never None for one)."""
    descriptor = field.message_type
    assert descriptor is not None, field.full_name
    return descriptor


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, as a person says it: "an array", "a number", "null"...
    (for "must be a JSON object, not …")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
