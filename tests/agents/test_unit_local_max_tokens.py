"""The local model's default max_tokens: an agent or run that leaves max_tokens out gets
LOCAL_MODEL_MAX_TOKENS (1024) for a `local:` model — the 0.5B model can repeat itself until the
limit — unless DEFAULT_MAX_TOKENS is set; other models keep DEFAULT_MAX_TOKENS (4096)."""

from __future__ import annotations

from typing import Any

import pytest

from amelia.v1 import agents_pb2
from amelia_agents import agent_fields
from amelia_common.settings import Settings

NO_KEYS = {"ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": "", "OPENROUTER_API_KEY": ""}


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, DEFAULT_MODEL="", **{**NO_KEYS, **values})  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("values", "model", "expected"),
    [
        ({}, "", 1024),  # a fresh machine: the default model is the local one
        ({}, "local:qwen2.5-coder-0.5b", 1024),
        ({"ANTHROPIC_API_KEY": "sk-ant-x"}, "local:qwen2.5-coder-0.5b", 1024),
        ({"ANTHROPIC_API_KEY": "sk-ant-x"}, "", 4096),
        ({"ANTHROPIC_API_KEY": "sk-ant-x"}, "openai:m@http://127.0.0.1:1/v1", 4096),
        ({"LOCAL_MODEL_MAX_TOKENS": 300}, "local:qwen2.5-coder-0.5b", 300),
        ({"DEFAULT_MAX_TOKENS": 2000}, "local:qwen2.5-coder-0.5b", 2000),  # set: it wins
    ],
)
def test_an_agent_without_max_tokens(values: dict[str, Any], model: str, expected: int) -> None:
    agent = agents_pb2.Agent(model=model)
    assert agent_fields.max_tokens(agent, settings(**values)) == expected
    assert agent_fields.max_tokens(agents_pb2.Agent(model=model, max_tokens=50), settings()) == 50


def test_runs_without_an_agent_get_it_when_the_default_model_is_local() -> None:
    assert settings().DEFAULT_MAX_TOKENS == 1024
    assert settings(ANTHROPIC_API_KEY="sk-ant-x").DEFAULT_MAX_TOKENS == 4096
    assert settings(DEFAULT_MAX_TOKENS=3000).DEFAULT_MAX_TOKENS == 3000
