"""The one way the gateway reads JSON a client sent: request bodies, form fields, socket messages.

Python's `json` reads more than JSON, and more than anything behind the gateway can carry, so
each of these is refused here with a 400 (an `error` on a socket) that says what is wrong:

- `NaN`, `Infinity`, `-Infinity` (JSON has none; Python accepts them) and numbers too large to
  be finite (`1e999` reads as infinity): stored, they make the data unreadable for every JSON
  reader after them;
- integers with more digits than Python converts (its int/str limit raises ValueError);
- nesting deeper than `MAX_DEPTH` (past Python's recursion limit the parser itself fails; well
  before it, protobuf stops decoding a Struct at 100 message levels, three per JSON level);
- lone surrogates (`"\\ud800"`): valid JSON escapes, but not Unicode, so no UTF-8 encoder (gRPC,
  the socket) can send them on;
- a key given twice in one object (`{"team": "a", "team": "b"}`): Python keeps the last one
  silently; grpc-gateway's protojson refuses it, and which one the client meant is a guess.

Integers a double cannot hold are refused later, only where they would become one (a Struct
field: `transcode._check_exact`); a typed int64 field takes them.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from amelia_common.json_numbers import json_kind
from amelia_gateway.errors import GatewayError, invalid

# Levels of objects/arrays, the outermost counting as 1; a Struct field of a request sits at
# level 2 or 3, so this leaves it ~30, under protobuf's decoding limit (~33).
MAX_DEPTH = 32


class _RefusedError(Exception):
    """Raised from inside the parser's hooks; becomes the GatewayError for the whole input."""


def _refuse_constant(name: str) -> NoReturn:
    raise _RefusedError(f"has {name}, which JSON does not allow: numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 24 else text[:20] + "…"
        raise _RefusedError(f"has the number {shown}, too large to be finite")
    return value


def _one_value_per_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            shown = key if len(key) <= 40 else key[:36] + "…"
            raise _RefusedError(f"gives the key {shown!r} more than once in one object")
        found[key] = value
    return found


def read_json(data: bytes | str, what: str) -> Any:
    """`data` parsed as strict JSON; `what` ("request body") starts every error message."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_one_value_per_key,
        )
    except UnicodeDecodeError:
        raise invalid(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise invalid(f"{what} is not valid JSON: {exc}") from None
    except _RefusedError as exc:
        raise invalid(f"{what} {exc}") from None
    except RecursionError:
        raise _too_deep(what) from None
    except ValueError:  # int(): more digits than sys.get_int_max_str_digits()
        raise invalid(f"{what} has a number with more digits than can be read") from None
    _check_tree(value, what)
    return value


def read_json_object(data: bytes | str, what: str) -> dict[str, Any]:
    """`read_json`, and the value must be an object."""
    value = read_json(data, what)
    if not isinstance(value, dict):
        raise invalid(f"{what} must be a JSON object, not {json_kind(value)}")
    return value


def _check_tree(value: Any, what: str) -> None:
    """Depth and lone surrogates, walked without recursion (the value may be deep)."""
    if isinstance(value, str):
        _check_text(value, what)
        return
    pending: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while pending:
        node, depth = pending.pop()
        items = [*node, *node.values()] if isinstance(node, dict) else node
        for item in items:
            if isinstance(item, str):
                _check_text(item, what)
            elif isinstance(item, dict | list):
                if depth >= MAX_DEPTH:
                    raise _too_deep(what)
                pending.append((item, depth + 1))


def _check_text(text: str, what: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise invalid(
            f"{what} has a lone surrogate (\\u{ord(bad):04x}) in a string: that is not Unicode"
            " text; escape characters outside the BMP as surrogate pairs"
        ) from None


def _too_deep(what: str) -> GatewayError:
    return invalid(f"{what} is nested too deeply: at most {MAX_DEPTH} levels of objects/arrays")
