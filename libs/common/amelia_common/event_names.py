"""Event types, subjects and type patterns: what the event log accepts, in one place.

Kept apart from `amelia_common.eventlog` (which imports the NATS client) so that the gateway,
which must not import NATS, checks a WebSocket subscription with the events service's own rules
before it answers `subscribed`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from amelia_common.errors import InvalidArgumentError, shorten_echoes
from amelia_common.names import CANONICAL_FORM, misspelt_uuid

_TYPE_TOKEN = re.compile(r"[a-z][a-z0-9_-]*")
# A whole event type in one match: two or more dotted lowercase words (see validate_type).
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_-]*(?:\.[a-z][a-z0-9_-]*)+")
_RESOURCE = re.compile(r"([a-z][a-z0-9-]*)/([A-Za-z0-9_-]+|\*)")
# Every NATS subject the log uses is made of these (`amelia.events.<collection>.<id>.<type>`,
# a reader's filter of a subject and type patterns held to the same bounds), so none comes near
# NATS's 4 KiB protocol line (`max_control_line`), past which the server closes the connection.
MAX_TYPE_LENGTH = 128
MAX_SUBJECT_LENGTH = 256
MAX_TYPE_PATTERNS = 32


class InvalidEventError(InvalidArgumentError):
    """An event, filter or pattern that cannot be stored or matched; the message says why."""


def validate_type(event_type: str) -> None:
    if len(event_type) > MAX_TYPE_LENGTH:
        raise InvalidEventError(
            shorten_echoes(
                f"event type {event_type!r} is longer than {MAX_TYPE_LENGTH} characters, the "
                "most an event type may have"
            )
        )
    if not _EVENT_TYPE.fullmatch(event_type):
        raise InvalidEventError(
            f"event type {event_type!r} must be dotted lowercase words, e.g. 'run.token'"
        )


def subject_tokens(subject: str, *, allow_wildcard: bool = False) -> str:
    """`runs/abc` → `runs.abc`; empty → `_._`; `runs/*` → `runs.*` when allowed."""
    if not subject:
        return "_._"
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise InvalidEventError(
            shorten_echoes(
                f"subject {subject!r} is longer than {MAX_SUBJECT_LENGTH} characters: it must "
                f"look like 'collection/id' of at most {MAX_SUBJECT_LENGTH} characters"
            )
        )
    match = _RESOURCE.fullmatch(subject)
    if not match or (match.group(2) == "*" and not allow_wildcard):
        raise InvalidEventError(
            f"subject {subject!r} must look like 'collection/id' (e.g. 'runs/4f1c…')"
            + (" or 'collection/*'" if allow_wildcard else "")
        )
    collection, value = match.groups()
    canonical = misspelt_uuid(collection, value)
    if canonical is not None:
        # Would be stored or matched as given, so it would name (or find) nothing the mesh logs.
        raise InvalidEventError(
            f"subject {subject!r} names no {collection.removesuffix('s')} the mesh logs: its "
            f"subject is '{collection}/{canonical}', {CANONICAL_FORM}"
        )
    return f"{collection}.{value}"


def type_pattern_tokens(pattern: str) -> str:
    """A user type pattern as NATS tokens: `run.*` (trailing) → `run.>`; `*` mid-way is one token.

    At most MAX_TYPE_LENGTH characters, as a type: a wildcard stands for at least one character,
    so a longer pattern matches no type the log can hold. (It also ends up in the subject of
    JetStream's consumer-create request: one of several thousand characters went past NATS's
    4 KiB control line, and the server closed the events service's connection for good.)"""
    if len(pattern) > MAX_TYPE_LENGTH:
        raise InvalidEventError(
            shorten_echoes(
                f"type pattern {pattern!r} is longer than {MAX_TYPE_LENGTH} characters, the most "
                "an event type may have: a longer pattern could never match"
            )
        )
    tokens = pattern.split(".")
    if not pattern or any(not t for t in tokens):
        raise InvalidEventError(f"type pattern {pattern!r} has an empty token")
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        if token == ">" and not last:
            raise InvalidEventError(f"type pattern {pattern!r}: '>' may only be the last token")
        if token not in ("*", ">") and not _TYPE_TOKEN.fullmatch(token):
            raise InvalidEventError(
                f"type pattern {pattern!r}: token {token!r} must be a lowercase word, '*' or '>'"
            )
    if tokens[-1] == "*":
        tokens[-1] = ">"
    return ".".join(tokens)


def filter_tokens(types: Sequence[str], subject: str) -> tuple[str, set[str]]:
    """An EventFilter as NATS tokens: its subject's (`*.*` for any) and its type patterns'
    (`>` for any), or `InvalidEventError` naming the first problem."""
    if len(types) > MAX_TYPE_PATTERNS:
        raise InvalidEventError(f"at most {MAX_TYPE_PATTERNS} type patterns, got {len(types)}")
    resource = subject_tokens(subject, allow_wildcard=True) if subject else "*.*"
    return resource, {type_pattern_tokens(t) for t in types} or {">"}
