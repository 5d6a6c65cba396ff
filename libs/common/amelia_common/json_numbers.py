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
from typing import Any

from google.protobuf import json_format
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
