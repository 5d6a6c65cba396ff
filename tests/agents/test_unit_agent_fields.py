"""An agent's fields validated in process, table-driven: what CreateAgent/UpdateAgent store for a
request's field, and the reason they refuse a bad one (INVALID_ARGUMENT through the interceptor)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import duration_pb2

from amelia.v1 import agents_pb2
from amelia_agents import agent_fields
from amelia_common.errors import InvalidArgumentError
from amelia_common.settings import Settings

SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]


def _agent(**fields: Any) -> agents_pb2.Agent:
    return agents_pb2.Agent(**fields)


ACCEPTED = [
    # (request fields, field validated, column, value stored)
    ({}, "model", "model", SETTINGS.DEFAULT_MODEL),
    ({"model": "  offline:echo "}, "model", "model", "offline:echo"),
    ({}, "temperature", "temperature", SETTINGS.DEFAULT_TEMPERATURE),
    ({"temperature": 0.0}, "temperature", "temperature", 0.0),  # set to 0, not "unset"
    ({"temperature": 2.0}, "temperature", "temperature", 2.0),
    ({}, "max_tokens", "max_tokens", SETTINGS.DEFAULT_MAX_TOKENS),
    ({"max_tokens": 7}, "max_tokens", "max_tokens", 7),
    ({}, "timeout", "timeout_seconds", 300.0),
    (
        {"timeout": duration_pb2.Duration(seconds=1, nanos=500_000_000)},
        "timeout",
        "timeout_seconds",
        1.5,
    ),
    ({}, "retry_attempts", "retry_attempts", 3),
    ({"retry_attempts": 0}, "retry_attempts", "retry_attempts", 0),
    ({"retry_attempts": 20}, "retry_attempts", "retry_attempts", 20),
    (
        {"context_sources": ["documents/*", "documents/0b8f6c1e-0d3c-4a0f-9f2e-5b1c2d3e4f50"]},
        "context_sources",
        "context_sources",
        ["documents/*", "documents/0b8f6c1e-0d3c-4a0f-9f2e-5b1c2d3e4f50"],
    ),
    ({"tools": ["calculator", "calculator"]}, "tools", "tools", ["calculator"]),
    ({"display_name": "Ada"}, "display_name", "display_name", "Ada"),
]


@pytest.mark.parametrize(("fields", "name", "column", "stored"), ACCEPTED)
def test_a_valid_field_becomes_its_column(
    fields: dict[str, Any], name: str, column: str, stored: Any
) -> None:
    assert agent_fields.values(_agent(**fields), [name], SETTINGS) == {column: stored}


REFUSED = [
    # (request fields, field validated, words the reason holds)
    ({"model": "gpt-4"}, "model", "names no provider"),
    ({"model": "nosuch:x"}, "model", "provider must be one of"),
    # QA s25 F6: a mistyped server was taken as part of the name and sent to api.openai.com.
    ({"model": "openai:x@notaurl"}, "model", "what follows '@' must be the server's base URL"),
    ({"model": "openai:x@http://h:99999/v1"}, "model", "is not a server's base URL"),
    ({"model": "openai:@http://h/v1"}, "model", "names no model before '@'"),
    ({"temperature": 2.5}, "temperature", "temperature must be between 0 and 2"),
    ({"temperature": -0.1}, "temperature", "temperature must be between 0 and 2"),
    ({"max_tokens": -1}, "max_tokens", "max_tokens must be positive"),
    ({"timeout": duration_pb2.Duration(seconds=0)}, "timeout", "out of range: use 1s to 604800s"),
    ({"timeout": duration_pb2.Duration(seconds=1, nanos=-1)}, "timeout", "not a valid duration"),
    ({"retry_attempts": 21}, "retry_attempts", "retry_attempts must be between 0 and 20"),
    ({"retry_attempts": -1}, "retry_attempts", "retry_attempts must be between 0 and 20"),
    ({"context_sources": ["runs/x"]}, "context_sources", "must be 'documents/<id>'"),
    ({"tools": ["rm_rf"]}, "tools", "unknown tools ['rm_rf']"),
    # Text PostgreSQL cannot keep is refused whichever field the mask names.
    ({"description": "a\x00b"}, "model", "agent.description"),
    ({"tools": ["a\x00"]}, "display_name", "agent.tools"),
]


@pytest.mark.parametrize(("fields", "name", "reason"), REFUSED)
def test_a_bad_field_is_refused_with_its_reason(
    fields: dict[str, Any], name: str, reason: str
) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        agent_fields.values(_agent(**fields), [name], SETTINGS)
    assert reason in raised.value.message


def test_every_field_has_a_validator_and_create_fills_every_column() -> None:
    values = agent_fields.values(_agent(), agent_fields.NAMES, SETTINGS)
    assert set(values) == {column for column, _ in agent_fields.FIELDS.values()}


MASKS = [
    # (update_mask paths, request fields, fields updated)
    (["description"], {}, ["description"]),
    (["description, model", "tools"], {}, ["description", "model", "tools"]),
    # No mask: the fields the request sets, an optional one set to zero included.
    ([], {"temperature": 0.0, "description": "d"}, ["description", "temperature"]),
    ([], {"retry_attempts": 0, "tools": ["calculator"]}, ["retry_attempts", "tools"]),
    ([], {}, []),
]


@pytest.mark.parametrize(("paths", "fields", "updated"), MASKS)
def test_update_mask_names_the_fields_updated(
    paths: list[str], fields: dict[str, Any], updated: list[str]
) -> None:
    assert agent_fields.mask_fields(paths, _agent(**fields)) == updated


def test_an_unknown_mask_field_is_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        agent_fields.mask_fields(["name", "model"], _agent())
    assert "unknown fields ['name']" in raised.value.message
    assert "allowed: display_name, description" in raised.value.message
