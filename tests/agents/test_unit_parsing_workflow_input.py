"""`registry.validate` in process: a run's input against its workflow's JSON schema subset
(type, required, properties, additionalProperties, items, enum, minLength, minimum, maximum,
format "model"), or InvalidInputError
naming the path that does not fit. CreateRun tests go through a running mesh; these cover each
keyword once, without one."""

from __future__ import annotations

from typing import Any

import pytest

import amelia_agents.workflows.builtin  # noqa: F401 - registers the built-in workflows
from amelia_agents.workflows.registry import InvalidInputError, get, validate

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["message"],
    "properties": {
        "message": {"type": "string", "minLength": 1},
        "delay_ms": {"type": "integer", "minimum": 0, "maximum": 10_000},
        "ratio": {"type": "number"},
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "options": {
            "type": "object",
            "required": ["depth"],
            "properties": {"depth": {"type": ["integer", "null"]}},
        },
        "flag": {"type": "boolean"},
    },
}

VALID: list[dict[str, Any]] = [
    {"message": "hi"},
    {"message": "hi", "unknown": {"any": ["thing"]}},  # properties the schema does not name
    {"message": "hi", "delay_ms": 0},
    {"message": "hi", "delay_ms": 10_000},
    {"message": "hi", "delay_ms": 5.0},  # JSON (and Struct) numbers are floats
    {"message": "hi", "ratio": 1},
    {"message": "hi", "ratio": 0.5},
    {"message": "hi", "mode": "slow"},
    {"message": "hi", "tags": []},
    {"message": "hi", "tags": ["a", "b"]},
    {"message": "hi", "options": {"depth": None}},
    {"message": "hi", "options": {"depth": 3}},
    {"message": "hi", "flag": False},
]


@pytest.mark.parametrize("value", VALID, ids=[repr(v) for v in VALID])
def test_an_input_that_fits_passes(value: dict[str, Any]) -> None:
    validate(value, SCHEMA)


INVALID: list[tuple[Any, str]] = [
    ([], "input must be object"),
    ("hi", "input must be object"),
    ({}, "input.message is required"),
    ({"message": ""}, "input.message must not be empty"),
    ({"message": 5}, "input.message must be string"),
    ({"message": "hi", "delay_ms": -1}, "input.delay_ms must be at least 0"),
    ({"message": "hi", "delay_ms": 10_001}, "input.delay_ms must be at most 10000"),
    ({"message": "hi", "delay_ms": 1.5}, "input.delay_ms must be integer"),
    ({"message": "hi", "delay_ms": True}, "input.delay_ms must be integer"),  # bool is not int
    ({"message": "hi", "ratio": False}, "input.ratio must be number"),
    ({"message": "hi", "ratio": "1"}, "input.ratio must be number"),
    ({"message": "hi", "mode": "medium"}, "input.mode must be one of ['fast', 'slow']"),
    ({"message": "hi", "tags": "a"}, "input.tags must be array"),
    ({"message": "hi", "tags": ["a", ""]}, "input.tags[1] must not be empty"),
    ({"message": "hi", "tags": ["a", 2]}, "input.tags[1] must be string"),
    ({"message": "hi", "options": {}}, "input.options.depth is required"),
    ({"message": "hi", "options": {"depth": "3"}}, "input.options.depth must be integer or null"),
    ({"message": "hi", "flag": 0}, "input.flag must be boolean"),
]


@pytest.mark.parametrize(("value", "message"), INVALID, ids=[m for _, m in INVALID])
def test_an_input_that_does_not_fit_names_the_path(value: Any, message: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        validate(value, SCHEMA)
    assert str(refused.value) == message


def test_the_path_prefix_is_the_callers() -> None:
    with pytest.raises(InvalidInputError, match=r"^request\.message is required$"):
        validate({}, SCHEMA, "request")


def test_an_empty_schema_accepts_anything() -> None:
    values: list[Any] = [None, 1, "x", [], {}, {"a": [1]}]
    for value in values:
        validate(value, {})


def test_a_model_workflows_max_tokens_is_held_to_what_an_agents_can_be() -> None:
    """QA s25: `input.max_tokens: 1e12` was taken by CreateRun and failed on the worker."""
    chat = get("chat")
    assert chat is not None
    validate({"message": "hi", "max_tokens": 2**31 - 1}, chat.input_schema)
    with pytest.raises(InvalidInputError, match=r"^input.max_tokens must be at most 2147483647$"):
        validate({"message": "hi", "max_tokens": 1e12}, chat.input_schema)


def test_a_step_model_for_a_step_the_workflow_lacks_is_refused_naming_its_steps() -> None:
    """QA s25 F6: a plan run's `models.review` (no such step) was taken and silently unused."""
    plan = get("plan")
    assert plan is not None
    validate({"message": "hi", "models": {"design": "offline:echo"}}, plan.input_schema)
    with pytest.raises(InvalidInputError) as refused:
        validate({"message": "hi", "models": {"review": "offline:echo"}}, plan.input_schema)
    assert str(refused.value) == "input.models takes only discovery, design, planning; not 'review'"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"message": "hi", "model": "gpt-4"}, "input.model: model 'gpt-4' names no provider"),
        ({"message": "hi", "model": "offline:nosuch"}, "input.model: unknown offline mode"),
        (
            {"message": "hi", "models": {"design": "openai:x@notaurl"}},
            "input.models.design: model 'openai:x@notaurl': what follows '@'",
        ),
    ],
)
def test_a_model_the_mesh_cannot_parse_is_refused_before_the_run_is_queued(
    value: dict[str, Any], reason: str
) -> None:
    plan = get("plan")
    assert plan is not None
    with pytest.raises(InvalidInputError) as refused:
        validate(value, plan.input_schema)
    assert str(refused.value).startswith(reason)
