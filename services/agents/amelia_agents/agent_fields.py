"""An agent's settable fields, one validator each: the column value a request's field becomes.

CreateAgent validates every field, UpdateAgent only those its mask names (or that the request
sets); both go through `values`, so a field is checked the same way whichever method sets it.
A bad value is InvalidArgumentError with the reason, before anything is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from amelia.v1 import agents_pb2
from amelia_agents import convert, retrieval, tools
from amelia_agents.llm import ModelError
from amelia_agents.model_check import check_max_tokens, check_model
from amelia_agents.runtime import DEFAULT_RETRY_ATTEMPTS, DEFAULT_TIMEOUT_SECONDS
from amelia_common.errors import InvalidArgumentError, check_json, check_text
from amelia_common.fieldmask import mask_paths
from amelia_common.settings import Settings

Agent: TypeAlias = agents_pb2.Agent
Validator = Callable[[Agent, Settings], Any]

TEMPERATURE_RANGE = (0.0, 2.0)
RETRY_ATTEMPTS_RANGE = (0, 20)


# The longest an agent's text fields may be, in characters: OpenAI's Assistants API's limits
# (name 256, description 512, instructions 256,000); a model string is a name and a URL.
TEXT_LIMITS = {
    "display_name": 256,
    "description": 512,
    "system_prompt": 256_000,
    "model": 1000,
}


def _text(name: str) -> Validator:
    def validate(agent: Agent, settings: Settings) -> str:
        value: str = getattr(agent, name)
        return value

    return validate


def check_lengths(agent: Agent) -> None:
    """InvalidArgumentError naming the first text field longer than its TEXT_LIMITS, or holding
    NUL."""
    for name, limit in TEXT_LIMITS.items():
        check_text(getattr(agent, name), f"agent.{name}", limit)


def model(agent: Agent, settings: Settings) -> str:
    """The provider/model string (the default model when blank), refused now rather than at
    the first run when it cannot be used: `model_check.check_model`, as a run's input.model."""
    value = agent.model.strip() or settings.DEFAULT_MODEL
    try:
        check_model(value, settings)
    except ModelError as exc:
        raise InvalidArgumentError(str(exc)) from None
    return value


def temperature(agent: Agent, settings: Settings) -> float:
    value = agent.temperature if agent.HasField("temperature") else settings.DEFAULT_TEMPERATURE
    low, high = TEMPERATURE_RANGE
    if not low <= value <= high:
        raise InvalidArgumentError(f"temperature must be between {low:g} and {high:g}")
    return value


def max_tokens(agent: Agent, settings: Settings) -> int:
    """The agent's max_tokens; left out, DEFAULT_MAX_TOKENS, or LOCAL_MODEL_MAX_TOKENS for a
    `local:` model unless DEFAULT_MAX_TOKENS is set (a small model may repeat until the end)."""
    if agent.max_tokens < 0:
        raise InvalidArgumentError("max_tokens must be positive")
    if agent.max_tokens:
        return agent.max_tokens
    local = (agent.model.strip() or settings.DEFAULT_MODEL).startswith("local:")
    if local and "DEFAULT_MAX_TOKENS" not in settings.model_fields_set:
        return settings.LOCAL_MODEL_MAX_TOKENS
    return settings.DEFAULT_MAX_TOKENS


def timeout(agent: Agent, settings: Settings) -> float:
    seconds = (
        convert.duration_seconds(agent.timeout, "agent.timeout")
        if agent.HasField("timeout")
        else DEFAULT_TIMEOUT_SECONDS
    )
    if seconds <= 0:
        raise InvalidArgumentError("timeout must be positive")
    return seconds


def retry_attempts(agent: Agent, settings: Settings) -> int:
    value = agent.retry_attempts if agent.HasField("retry_attempts") else DEFAULT_RETRY_ATTEMPTS
    low, high = RETRY_ATTEMPTS_RANGE
    if not low <= value <= high:
        raise InvalidArgumentError(f"retry_attempts must be between {low} and {high}")
    return value


def context_sources(agent: Agent, settings: Settings) -> list[str]:
    try:
        return retrieval.check_sources(list(agent.context_sources), "agent.context_sources")
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


def tool_names(agent: Agent, settings: Settings) -> list[str]:
    try:
        return tools.check_tools(list(agent.tools))
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


# The request's field name → (its column, its validator), in the order the API lists them.
FIELDS: dict[str, tuple[str, Validator]] = {
    "display_name": ("display_name", _text("display_name")),
    "description": ("description", _text("description")),
    "system_prompt": ("system_prompt", _text("system_prompt")),
    "model": ("model", model),
    "temperature": ("temperature", temperature),
    "max_tokens": ("max_tokens", max_tokens),
    "timeout": ("timeout_seconds", timeout),
    "retry_attempts": ("retry_attempts", retry_attempts),
    "context_sources": ("context_sources", context_sources),
    "tools": ("tools", tool_names),
}
NAMES = tuple(FIELDS)


def values(agent: Agent, fields: Sequence[str], settings: Settings) -> dict[str, Any]:
    """Column values for `fields` of `agent`; InvalidArgumentError with the reason.

    Text the request carries is refused if longer than TEXT_LIMITS or if JSON or PostgreSQL
    cannot keep it (NUL), whichever fields are named; output-only fields (create_time, …) are
    ignored, whatever they hold."""
    check_lengths(agent)
    for name in TEXT_LIMITS:
        check_json(getattr(agent, name), f"agent.{name}")
    check_json(list(agent.context_sources), "agent.context_sources")
    check_json(list(agent.tools), "agent.tools")
    found: dict[str, Any] = {}
    for name in fields:
        column, validate = FIELDS[name]
        found[column] = validate(agent, settings)
    if "max_tokens" in found and ("model" in found or agent.model.strip()):
        try:  # the model's context must hold them (an update of max_tokens alone: not known)
            check_max_tokens(
                found.get("model") or agent.model.strip(), found["max_tokens"], settings
            )
        except ModelError as exc:
            raise InvalidArgumentError(str(exc)) from None
    return found


def set_in(agent: Agent) -> list[str]:
    """The fields `agent` sets (an update without a mask changes only these): a value other
    than the default, or one whose presence is tracked (`optional`, a message) set to any."""
    present = {field.name for field, _ in agent.ListFields()}
    return [name for name in NAMES if name in present]


def mask_fields(paths: Sequence[str], agent: Agent) -> list[str]:
    """An update mask's field names (`fieldmask.mask_paths`: comma-separated, snake_case or
    lowerCamelCase); the fields `agent` sets when the mask is empty; InvalidArgumentError naming
    unknown ones."""
    return mask_paths(paths, NAMES) or set_in(agent)
