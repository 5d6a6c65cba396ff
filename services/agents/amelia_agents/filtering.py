"""ListRuns' `filter`: an AIP-160 expression compiled to one SQL condition on the runs table.

The grammar is AIP-160's: `a b` and `a AND b` both mean AND; OR binds tighter than AND
(`a AND b OR c` is `a AND (b OR c)`); `NOT x` and `-x` negate; parentheses group. A restriction
is `field op value` with op one of `= != < <= > >= :`; a bare word or quoted string is a text
search (any case) in the run's input, output and error. Values are words or quoted strings.
`input.<key>` and `output.<key>` reach into the run's JSON (`json_restriction`). `field:*` is
AIP-160's "has": the run has a value for the field (`_present`).

Everything is checked before a query is built: an unknown field, an operator a field does not
take, a value of the wrong kind or outside the field's range (a number PostgreSQL would refuse
to bind), or nesting deeper than MAX_DEPTH (each parenthesis, `NOT` and `-` is a level the parser
recurses into) is an InvalidArgumentError naming it and where it is.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Numeric, Text, and_, case, cast, false, func, not_, or_
from sqlalchemy.sql.elements import ColumnElement

from amelia_agents.models import RunRow, RunState
from amelia_common.errors import InvalidArgumentError
from amelia_common.names import uuid_name

MAX_FILTER_LENGTH = 2000
MAX_DEPTH = 32
HAS = "*"  # `field:*`
# A number as JSON writes one: no spaces, signs other than a leading '-', '_' or other digits.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_WHOLE_NUMBER = re.compile(r"-?[0-9]+")
# The numbers `input.<key>`/`output.<key>` compare with: PostgreSQL's numeric holds these
# exactly (and far beyond the doubles a Struct stores); further is refused, not an error there.
MAX_NUMBER_EXPONENT = 1000
COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
_TOKEN = re.compile(
    r"""\s*(?:(?P<op>!=|<=|>=|=|<|>|:|\(|\))|"(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>(?:[^'\\]|\\.)*)'"""
    r"""|(?P<word>[^\s()=!<>:"']+))"""
)


@dataclass(frozen=True)
class Token:
    kind: str  # "op", "word" or "text" (a quoted string)
    value: str
    at: int


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    source = source.rstrip()
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None or match.end() == position:
            rest = source[position:].lstrip()
            if rest[:1] in ("'", '"'):
                raise InvalidArgumentError(
                    f"filter: the quote at {len(source) - len(rest)} is never closed"
                )
            raise InvalidArgumentError(f"filter: unexpected {source[position:].strip()[:20]!r}")
        at = match.start(match.lastgroup or 0)
        if match.group("op") is not None:
            tokens.append(Token("op", match.group("op"), at))
        elif match.group("word") is not None:
            tokens.append(Token("word", match.group("word"), at))
        else:
            quoted = match.group("dq") if match.group("dq") is not None else match.group("sq")
            tokens.append(Token("text", re.sub(r"\\(.)", r"\1", quoted), at))
        position = match.end()
    return tokens


# -- fields ------------------------------------------------------------------------------------


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _status(value: str) -> str:
    name = value.upper().removeprefix("RUN_STATUS_")
    if name not in RunState.__members__:
        raise InvalidArgumentError(
            f"filter: status {value!r} is not one of {', '.join(RunState.__members__)}"
        )
    return name


def _time(value: str) -> datetime:
    hint = 'write it in quotes as RFC 3339, e.g. "2026-01-31T00:00:00Z"'
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgumentError(f"filter: {value!r} is not a time; {hint}") from None
    if stamp.tzinfo is None:
        raise InvalidArgumentError(f"filter: time {value!r} has no time zone; {hint}")
    return stamp


def _whole(name: str, bits: int) -> Callable[[str], int]:
    """The parser of a field held in a `bits`-bit integer column: a value outside its range is
    refused naming the range (PostgreSQL would refuse to bind it)."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def parse(value: str) -> int:
        if not _WHOLE_NUMBER.fullmatch(value):
            raise InvalidArgumentError(f"filter: {value!r} is not a whole number")
        number = int(value)
        if not low <= number <= high:
            raise InvalidArgumentError(
                f"filter: {name} holds whole numbers from {low} to {high}; {value} is outside"
            )
        return number

    return parse


def _thread(value: str) -> uuid.UUID:
    return uuid_name(value, "threads", "filter")


@dataclass(frozen=True)
class Field:
    column: Any
    parse: Callable[[str], Any]
    operators: tuple[str, ...]
    text: bool = False  # `:` means contains, any case
    unset: Any = None  # besides NULL, the value that means the run has none (`field:*` false)


_EQUALITY = ("=", "!=")
FIELDS: dict[str, Field] = {
    "status": Field(RunRow.status, _status, _EQUALITY),
    "workflow": Field(RunRow.workflow, lambda v: v.removeprefix("workflows/"), _EQUALITY, unset=""),
    "agent": Field(RunRow.agent_id, lambda v: v.removeprefix("agents/"), _EQUALITY, unset=""),
    "thread": Field(RunRow.thread_id, _thread, _EQUALITY),
    "create_time": Field(RunRow.create_time, _time, COMPARISONS),
    "start_time": Field(RunRow.start_time, _time, COMPARISONS),
    "end_time": Field(RunRow.end_time, _time, COMPARISONS),
    "usage.input_tokens": Field(
        RunRow.input_tokens, _whole("usage.input_tokens", 64), COMPARISONS, unset=0
    ),
    "usage.output_tokens": Field(
        RunRow.output_tokens, _whole("usage.output_tokens", 64), COMPARISONS, unset=0
    ),
    "attempt": Field(RunRow.attempt, _whole("attempt", 32), COMPARISONS, unset=0),
    "error": Field(RunRow.error, str, (*_EQUALITY, ":"), text=True, unset=""),
    "input": Field(cast(RunRow.input, Text), str, (":",), text=True),
    "output": Field(cast(RunRow.output, Text), str, (":",), text=True),
}


def _compare(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == "=":
        return column == value
    if op == "!=":
        # AIP-160: a field without a value (NULL) is "not equal" to any value.
        return or_(column != value, column.is_(None))
    if op == "<":
        return column < value
    if op == "<=":
        return column <= value
    if op == ">":
        return column > value
    return column >= value


def text_search(text: str) -> ColumnElement[bool]:
    """Any case, anywhere in the run's input, output or error."""
    pattern = _like(text)
    return or_(
        cast(RunRow.input, Text).ilike(pattern),
        cast(RunRow.output, Text).ilike(pattern),
        RunRow.error.ilike(pattern),
    )


# -- the parser --------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    def peek(self) -> Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise InvalidArgumentError("filter: ends too early; a value or ')' is missing")
        self.index += 1
        return token

    def is_op(self, value: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "op" and token.value == value

    def is_word(self, value: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "word" and token.value == value

    def deeper(self) -> None:
        """One more level the parser recurses into (a parenthesis, `NOT` or `-`): past MAX_DEPTH
        the filter is refused, long before Python's recursion limit."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise InvalidArgumentError(
                f"filter: nested more than {MAX_DEPTH} levels deep (each parenthesis, NOT and "
                "'-' is a level)"
            )

    def expression(self) -> ColumnElement[bool]:
        """sequence {AND sequence}; a sequence is factors side by side (also AND)."""
        self.deeper()
        parts = [self.factor()]
        while self.peek() is not None and not self.is_op(")"):
            if self.is_word("AND"):
                self.index += 1
            parts.append(self.factor())
        self.depth -= 1
        return parts[0] if len(parts) == 1 else and_(*parts)

    def factor(self) -> ColumnElement[bool]:
        parts = [self.term()]
        while self.is_word("OR"):
            self.index += 1
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else or_(*parts)

    def term(self) -> ColumnElement[bool]:
        if self.is_word("NOT"):
            self.index += 1
            return self.negated()
        token = self.peek()
        if token is not None and token.kind == "word" and token.value.startswith("-"):
            if len(token.value) == 1:
                raise InvalidArgumentError(f"filter: '-' at {token.at} must touch what it negates")
            self.tokens[self.index] = Token("word", token.value[1:], token.at + 1)
            return self.negated()
        return self.simple()

    def negated(self) -> ColumnElement[bool]:
        self.deeper()
        inner = self.term()
        self.depth -= 1
        return not_(inner)

    def simple(self) -> ColumnElement[bool]:
        token = self.take()
        if token.kind == "op" and token.value == "(":
            inner = self.expression()
            if not self.is_op(")"):
                raise InvalidArgumentError(f"filter: the '(' at {token.at} is never closed")
            self.index += 1
            return inner
        if token.kind == "op":
            raise InvalidArgumentError(f"filter: unexpected {token.value!r} at {token.at}")
        if token.value in ("AND", "OR") and token.kind == "word":
            raise InvalidArgumentError(f"filter: {token.value} at {token.at} has nothing before it")
        following = self.peek()
        if following is None or following.kind != "op" or following.value in ("(", ")"):
            return text_search(token.value)  # a bare word or string
        op = self.take().value
        value = self.take()
        if value.kind == "op":
            raise InvalidArgumentError(f"filter: {token.value} {op} needs a value at {value.at}")
        has = op == ":" and value.kind == "word" and value.value == HAS  # quoted "*" is text
        return self.restriction(token, op, value.value, has)

    def restriction(self, name: Token, op: str, raw: str, has: bool = False) -> ColumnElement[bool]:
        if name.kind == "word" and name.value.split(".", 1)[0] in JSON_FIELDS and "." in name.value:
            return json_restriction(name, op, raw, has)
        field = FIELDS.get(name.value)
        if field is None or name.kind != "word":
            raise InvalidArgumentError(
                f"filter: unknown field {name.value!r} at {name.at}; fields: {', '.join(FIELDS)}, "
                "input.<key>, output.<key>"
            )
        if has:
            return _present(name.value, field)
        if op not in field.operators:
            raise InvalidArgumentError(
                f"filter: {name.value} takes {' '.join(field.operators)}, not {op!r}"
            )
        if field.text and op == ":":
            return field.column.ilike(_like(raw))
        return _compare(field.column, op, field.parse(raw))


def _present(name: str, field: Field) -> ColumnElement[bool]:
    """`name:*`: the run has a value for the field — not NULL (JSON null for `input`/`output`),
    nor the empty text or 0 proto3 leaves out of a Run (`error`, `attempt`, `usage.*`)."""
    if name in JSON_FIELDS:
        column = JSON_FIELDS[name]
        return and_(column.is_not(None), func.jsonb_typeof(column) != "null")
    if field.unset is None:
        return field.column.is_not(None)
    return and_(field.column.is_not(None), field.column != field.unset)


JSON_FIELDS = {"input": RunRow.input, "output": RunRow.output}
_JSON_KEY = re.compile(r"[A-Za-z0-9_-]{1,100}")
MAX_JSON_PATH = 8


def json_restriction(name: Token, op: str, raw: str, has: bool = False) -> ColumnElement[bool]:
    """`input.<key>` or `output.<key>` (dots go deeper: `input.options.mode`): `=` and `!=`
    compare as numbers or as text (`input.count = 3` matches 3, 3.0 and "3"; a missing key is
    not equal), `:` is contains (any case), `:*` holds when the key is there (even holding
    null), `< <= > >=` compare numbers and hold only for values that are numbers."""
    field, *path = name.value.split(".")
    if not path or len(path) > MAX_JSON_PATH or not all(_JSON_KEY.fullmatch(k) for k in path):
        raise InvalidArgumentError(
            f"filter: {name.value!r} at {name.at} is not {field}.<key>: keys of letters, digits, "
            f"'_' or '-', at most {MAX_JSON_PATH} deep"
        )
    column = JSON_FIELDS[field]
    if has:
        return func.jsonb_extract_path(column, *path).is_not(None)
    as_text = func.jsonb_extract_path_text(column, *path)
    if op == ":":
        return as_text.ilike(_like(raw))
    if op in _EQUALITY:
        matched = json_equal(column, path, raw)
        return matched if op == "=" else not_(matched)
    return _compare(_json_number(column, path), op, _number(raw, name.value))


def _json_number(column: Any, path: list[str]) -> Any:
    """The JSON value at `path` as a number, NULL when it is not one."""
    value = func.jsonb_extract_path(column, *path)
    # CASE: a value that is not a number is never cast (PostgreSQL evaluates AND in any order).
    as_text = func.jsonb_extract_path_text(column, *path)
    return case((func.jsonb_typeof(value) == "number", cast(as_text, Numeric)))


def json_equal(column: Any, path: list[str], raw: str) -> ColumnElement[bool]:
    """Whether the JSON value at `path` of `column` is `raw`: as numbers or as text (3 matches
    3, 3.0 and "3"); a missing key is not equal. Also ListThreads' `metadata_filter`."""
    # JSON numbers from a Struct are doubles (3 is stored 3.0): equal as numbers, or as text.
    equal = func.jsonb_extract_path_text(column, *path) == raw
    number = json_number(raw)
    if number is not None:
        equal = or_(equal, _json_number(column, path) == number)
    return func.coalesce(equal, false())


def json_number(value: str) -> Decimal | None:
    """`value` as a number if it is one as JSON writes it (`2`, `-2.5`, `1e3`; not ` 2`, `+2`,
    `1_000` or `NaN`: those are only text) within MAX_NUMBER_EXPONENT, else None. ListThreads'
    and ListThreadHistory's `metadata_filter` compare numbers by it too."""
    if not _JSON_NUMBER.fullmatch(value):
        return None
    try:
        number = Decimal(value)
    except ArithmeticError:  # an exponent past what Decimal holds
        return None
    if not number:
        return Decimal(0)  # 0e99999 is 0 (PostgreSQL would refuse the scale)
    if not -MAX_NUMBER_EXPONENT <= number.adjusted() <= MAX_NUMBER_EXPONENT:
        return None
    return number


def _number(value: str, name: str) -> Decimal:
    number = json_number(value)
    if number is None:
        if _JSON_NUMBER.fullmatch(value):
            raise InvalidArgumentError(
                f"filter: {name} {value} is out of range: numbers are compared from "
                f"1e-{MAX_NUMBER_EXPONENT} to 1e{MAX_NUMBER_EXPONENT} in size (and 0)"
            )
        raise InvalidArgumentError(f"filter: {value!r} is not a number")
    return number


def compile_filter(source: str) -> ColumnElement[bool] | None:
    """The SQL condition `source` means, or None for an empty filter; InvalidArgumentError if it
    is not one this service understands."""
    if len(source) > MAX_FILTER_LENGTH:
        raise InvalidArgumentError(f"filter is longer than {MAX_FILTER_LENGTH} characters")
    if "\x00" in source:
        raise InvalidArgumentError("filter must not contain NUL characters")
    tokens = tokenize(source)
    if not tokens:
        return None
    parser = _Parser(tokens)
    condition = parser.expression()
    if parser.peek() is not None:
        token = parser.take()
        raise InvalidArgumentError(f"filter: unexpected {token.value!r} at {token.at}")
    return condition


__all__ = ["FIELDS", "compile_filter", "json_equal", "json_number", "text_search"]
