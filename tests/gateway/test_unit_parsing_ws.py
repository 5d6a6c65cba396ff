"""The /ws subscribe message's parsing in process (`ws.parse_since`, `ws.parse_spec`): what a
subscription asks for, or the error a client is sent. The WebSocket tests go through a running
gateway; these cover each rule once, without one."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from amelia_common.errors import InvalidArgumentError
from amelia_gateway.errors import cut
from amelia_gateway.hub import FeedSpec, Since
from amelia_gateway.ws import ProtocolError, parse_since, parse_spec

RUN = "runs/4f1c2a3b-0000-4000-8000-00000000abcd"
RUN_FORM = (
    "'run' must be a run name like 'runs/<uuid>' with the uuid in its canonical form "
    "(8-4-4-4-12 lowercase hex digits)"
)
NEW_YEAR = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())

SINCE: list[tuple[Any, bool, str, int]] = [
    # (value, run subscription, kind, sequence)
    (None, True, "beginning", 0),
    (None, False, "now", 0),
    (0, False, "beginning", 0),
    ("0", True, "beginning", 0),
    (5, True, "after", 5),
    ("7", False, "after", 7),
    ("18446744073709551615", False, "after", 2**64 - 1),
    ("beginning", True, "beginning", 0),
    ("beginning", False, "beginning", 0),
    ("now", False, "now", 0),
]


@pytest.mark.parametrize(("value", "run", "kind", "sequence"), SINCE)
def test_since_a_sequence_or_a_word(value: Any, run: bool, kind: str, sequence: int) -> None:
    assert parse_since(value, run=run) == Since(kind, sequence=sequence)


@pytest.mark.parametrize("value", ["2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00"])
def test_since_a_time(value: str) -> None:
    since = parse_since(value, run=False)
    assert since.kind == "time" and since.time is not None
    assert since.time.seconds == NEW_YEAR


def test_a_time_without_a_zone_is_refused_as_over_http() -> None:
    """`startTime` and `createdAfter` over HTTP refuse a time without a zone; the socket took it
    as UTC (QA s27 L2): the same rule and message now (`transcode.read_timestamp`)."""
    with pytest.raises(ProtocolError) as refused:
        parse_since("2026-01-01T00:00:00", run=False)
    assert str(refused.value) == (
        'since: must be an RFC 3339 time like "2026-01-01T00:00:00Z", got "2026-01-01T00:00:00"'
    )


REFUSED_SINCE: list[tuple[Any, bool, str]] = [
    (2**64, False, "between 0 and 2^64-1"),
    (-1, False, "between 0 and 2^64-1"),
    (True, False, "must be a sequence, a time, 'now' or 'beginning'"),
    (1.5, False, "must be a sequence, a time, 'now' or 'beginning'"),
    ([], False, "must be a sequence, a time, 'now' or 'beginning'"),
    ("now", True, "a run subscription replays the run"),
    ("2026-01-01T00:00:00Z", True, "a run subscription starts at a sequence or 'beginning'"),
    ("yesterday", False, "'yesterday' is not a sequence, an RFC 3339 time"),
    ("x" * 100, False, "'xxxxxxxx"),
    ("0001-01-01T00:00:00+14:00", False, "since: must be an RFC 3339 time like"),
    ("2026-01-01T00:00:00+24:00", False, "its UTC offset from -23:59 to +23:59"),
    ("2026-01-01", False, 'got "2026-01-01"'),
]


@pytest.mark.parametrize(("value", "run", "message"), REFUSED_SINCE)
def test_a_bad_since_says_what_is_accepted(value: Any, run: bool, message: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_since(value, run=run)
    assert message in str(refused.value)
    assert len(str(refused.value)) < 200  # a long value is cut short


SPECS: list[tuple[dict[str, Any], FeedSpec]] = [
    ({}, FeedSpec()),
    ({"run": RUN}, FeedSpec(run=RUN, since=Since("beginning"))),
    ({"run": RUN, "since": 9}, FeedSpec(run=RUN, since=Since("after", 9))),
    (
        {"filter": {"types": ["b", "a", "b"], "subject": "runs/*"}},
        FeedSpec(types=("a", "b"), subject="runs/*"),
    ),
    ({"filter": {"types": ["run.*.started", "app.>"]}}, FeedSpec(types=("app.>", "run.*.started"))),
    ({"filter": {"subject": "documents/d-1_x"}}, FeedSpec(subject="documents/d-1_x")),
    ({"batch": True, "since": "7"}, FeedSpec(since=Since("after", 7), batch=True)),
]


@pytest.mark.parametrize(("message", "expected"), SPECS)
def test_a_subscription_asks_for(message: dict[str, Any], expected: FeedSpec) -> None:
    assert parse_spec(message) == expected


def test_the_same_types_in_any_order_are_one_topic() -> None:
    one = parse_spec({"filter": {"types": ["a", "b"], "subject": "runs/*"}})
    other = parse_spec({"filter": {"types": ["b", "a", "a"], "subject": "runs/*"}})
    assert one.topic_key == other.topic_key


REFUSED_SPECS: list[tuple[dict[str, Any], str]] = [
    ({"run": RUN, "filter": {}}, "give either 'filter' or 'run', not both"),
    # Run names: the services' rule, `runs/<uuid>` spelt one way (amelia_common.names).
    ({"run": "abc"}, f"{RUN_FORM}, got 'abc'"),
    ({"run": 5}, f"{RUN_FORM}, got 5"),
    ({"run": "runs/a b"}, RUN_FORM),
    ({"run": "runs/nope"}, f"{RUN_FORM}, got 'runs/nope'"),
    ({"run": RUN[5:]}, RUN_FORM),
    ({"run": RUN + "0"}, RUN_FORM),
    ({"run": "runs/{" + RUN[5:] + "}"}, RUN_FORM),
    ({"run": "threads/" + RUN[5:]}, RUN_FORM),
    # Other spellings of the same UUID name no run (QA L2): upper case, no hyphens, a URN.
    ({"run": RUN.upper().replace("RUNS/", "runs/")}, RUN_FORM),
    ({"run": RUN.replace("-", "")}, f"{RUN_FORM}, got '{RUN.replace('-', '')}'"),
    ({"run": "runs/urn:uuid:" + RUN[5:]}, RUN_FORM),
    # Filters: the events service's rules (amelia_common.eventlog.filter_subjects).
    ({"filter": {"types": ["a..b"]}}, "type pattern 'a..b' has an empty token"),
    ({"filter": {"types": ["run.>.x"]}}, "'>' may only be the last token"),
    ({"filter": {"types": ["Run.X"]}}, "token 'Run' must be a lowercase word"),
    ({"filter": {"types": [f"t{i}" for i in range(33)]}}, "at most 32 type patterns"),
    ({"filter": {"subject": "runs/**"}}, "subject 'runs/**' must look like 'collection/id'"),
    ({"filter": {"subject": "runs"}}, "must look like 'collection/id'"),
    ({"filter": {"subject": "runs/a/b"}}, "must look like 'collection/id'"),
    ({"filter": {"subject": "Runs/x"}}, "must look like 'collection/id'"),
    ({"filter": {"subject": "runs/" + "x" * 300}}, "must look like 'collection/id'"),
    # The filter's shape: proto JSON's rules for an EventFilter, as over HTTP (QA s27 L2: a
    # string for `types` was taken as one pattern), in the body's words.
    ({"filter": []}, "subscribe: filter: must be a JSON object, got []"),
    ({"filter": "run.*"}, 'subscribe: filter: must be a JSON object, got "run.*"'),
    ({"filter": {"x": 1, "a": 2}}, 'unknown field "x" in filter; its fields are types, subject'),
    ({"filter": {"types": "run.*"}}, 'subscribe: filter.types: must be a JSON array, got "run.*"'),
    ({"filter": {"types": [""]}}, "'filter.types' must be a list of type patterns"),
    ({"filter": {"types": [1]}}, "filter.types: must be a JSON array, each item a string"),
    ({"filter": {"types": {"a": 1}}}, "filter.types: must be a JSON array"),
    ({"filter": {"subject": 1}}, "subscribe: filter.subject: must be a string, got 1"),
    ({"batch": "yes"}, "'batch' must be true or false"),
    ({"run": RUN, "since": "now"}, "a run subscription replays the run"),
]


@pytest.mark.parametrize(("message", "error"), REFUSED_SPECS)
def test_a_bad_subscription_says_what_is_wrong(message: dict[str, Any], error: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_spec(message)
    assert error in str(refused.value)
    assert len(str(refused.value)) <= 300  # a long value is cut short


# One table through the gateway's parsing and the services' own checks: a subscription the
# gateway lets through is one the service takes, and one it refuses is refused there too, with
# the same words (before `subscribed`, not as a stream error after it).
FILTERS: list[tuple[list[str], str]] = [
    ([], ""),
    (["run.*", "app.>", "*.token", "run.node.started"], "runs/*"),
    (["a_b-c.d"], "documents/d-1_X"),
    (["a..b"], ""),
    ([".a"], ""),
    (["a."], ""),
    (["run.>.x"], ""),
    (["Run.>.x"], ""),
    (["run.Token"], ""),
    (["1run"], ""),
    (["run.**"], ""),
    ([f"t{i}" for i in range(32)], ""),
    ([f"t{i}" for i in range(33)], ""),
    ([], "runs/**"),
    ([], "runs"),
    ([], "runs/a/b"),
    ([], "Runs/x"),
    ([], "runs/a b"),
    ([], "*/x"),
    ([], "runs/" + "x" * 251),
    ([], "runs/" + "x" * 252),
    (["run\n"], ""),
    ([], "runs/x\n"),
]


@pytest.mark.parametrize(("types", "subject"), FILTERS)
def test_the_gateway_checks_a_filter_as_the_events_service_does(
    types: list[str], subject: str
) -> None:
    from amelia_common.eventlog import filter_subjects

    try:
        filter_subjects(types, subject)
        service = ""
    except InvalidArgumentError as exc:
        service = str(exc)
    try:
        parse_spec({"filter": {"types": types, "subject": subject}})
        gateway = ""
    except ProtocolError as exc:
        gateway = str(exc)
    assert gateway == (cut(f"'filter': {service}") if service else "")


RUN_NAMES = [
    RUN,
    RUN.upper().replace("RUNS/", "runs/"),
    "runs/4f1c2a3b00004000800000000000abcd",
    "runs/nope",
    "runs/",
    "runs/" + RUN[5:-1],
    "runs/" + RUN[5:] + "0",
    "runs/" + RUN[5:] + "_",
    RUN + "\n",
]


@pytest.mark.parametrize("name", RUN_NAMES)
def test_the_gateway_takes_the_run_names_the_agents_service_takes(name: str) -> None:
    from amelia_agents.convert import run_id

    try:
        run_id(name)
        service = True
    except InvalidArgumentError:
        service = False
    try:
        parse_spec({"run": name})
        gateway = True
    except ProtocolError:
        gateway = False
    assert gateway == service
