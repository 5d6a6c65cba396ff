"""What the services accept in a /ws subscription, checked before the gateway answers `subscribed`.

The rules are the services' own, mirrored here because the gateway imports neither the services
nor NATS (`amelia_common.eventlog`, where the events service's rules live, imports the NATS
client): a run name as the agents service reads it (`amelia_agents.convert.run_id`), type
patterns and a subject as the events service reads them (`amelia_common.eventlog.filter_subjects`).
tests/gateway/test_unit_parsing_ws.py runs one table through both and fails when they disagree.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

# The events service's limits and shapes (amelia_common.eventlog.envelope).
MAX_TYPE_PATTERNS = 32
MAX_SUBJECT_LENGTH = 256
_PATTERN_WORD = re.compile(r"[a-z][a-z0-9_-]*")
_SUBJECT = re.compile(r"[a-z][a-z0-9-]*/(?:[A-Za-z0-9_-]+|\*)")
_RUN_NAME = re.compile(r"runs/([A-Za-z0-9_-]+)")


class RuleError(ValueError):
    """A subscription a service would refuse; the message says why, as the service would."""


def check_run_name(run: str) -> None:
    """`runs/<uuid>`, as the agents service takes it."""
    match = _RUN_NAME.fullmatch(run)
    try:
        uuid.UUID(match.group(1) if match else "-")
    except ValueError:
        raise RuleError(f"'run' must be a run name like 'runs/<uuid>', got {run!r}") from None


def check_filter(types: Sequence[str], subject: str) -> None:
    """Type patterns (dotted lowercase words, `*` for one word, `>` or a trailing `*` for the
    rest) and a subject (`collection/id` or `collection/*`; empty: any), as the events service
    takes them."""
    if len(types) > MAX_TYPE_PATTERNS:
        raise RuleError(f"at most {MAX_TYPE_PATTERNS} type patterns, got {len(types)}")
    for pattern in types:
        _check_pattern(pattern)
    if subject and (len(subject) > MAX_SUBJECT_LENGTH or not _SUBJECT.fullmatch(subject)):
        raise RuleError(
            f"subject {subject!r} must look like 'collection/id' (e.g. 'runs/4f1c…') "
            "or 'collection/*'"
        )


def _check_pattern(pattern: str) -> None:
    words = pattern.split(".")
    if "" in words:
        raise RuleError(f"type pattern {pattern!r} has an empty token")
    for position, word in enumerate(words, 1):
        if word == ">" and position < len(words):
            raise RuleError(f"type pattern {pattern!r}: '>' may only be the last token")
        if word not in ("*", ">") and not _PATTERN_WORD.fullmatch(word):
            raise RuleError(
                f"type pattern {pattern!r}: token {word!r} must be a lowercase word, '*' or '>'"
            )
