"""The seed's settings validations, each with its own error message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from amelia_common.settings import Environment, Settings


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_defaults_are_the_seeds() -> None:
    s = make()
    assert s.APP_NAME == "Amelia"
    assert (s.CHUNK_SIZE, s.CHUNK_OVERLAP, s.EMBEDDING_DIMENSION) == (800, 200, 384)
    # No cosine cut-off by default: hybrid search ranks, MiniLM's scores are no relevance test.
    assert (s.RAG_TOP_K, s.RAG_SIMILARITY_THRESHOLD) == (5, 0.0)
    assert (s.WS_HEARTBEAT_INTERVAL, s.WS_MAX_CONNECTIONS) == (30, 100)
    assert s.DATABASE_URL == "" and s.NATS_URL == ""  # empty: embedded servers


def test_the_default_model_and_temperature_follow_the_keys_set() -> None:
    """No key: the local model, greedy (sampled, the 0.5B model sometimes says Sydney is
    Australia's capital); with a key, that provider at the seed's 0.7; a temperature set is
    kept whatever the model."""
    local = make()
    assert (local.DEFAULT_MODEL, local.DEFAULT_TEMPERATURE) == ("local:qwen2.5-coder-0.5b", 0.0)
    assert make(LOCAL_MODEL_TEMPERATURE=0.3).DEFAULT_TEMPERATURE == 0.3
    assert make(DEFAULT_TEMPERATURE=0.9).DEFAULT_TEMPERATURE == 0.9
    keyed = make(ANTHROPIC_API_KEY="sk-ant-abc")
    assert keyed.DEFAULT_MODEL.startswith("claude") and keyed.DEFAULT_TEMPERATURE == 0.7
    assert make(OPENAI_API_KEY="sk-x").DEFAULT_MODEL == "openai:gpt-4o-mini"
    off = make(LOCAL_MODEL="off")
    assert not off.DEFAULT_MODEL.startswith("local:") and off.DEFAULT_TEMPERATURE == 0.7
    mine = make(DEFAULT_MODEL="offline:echo")
    assert mine.DEFAULT_TEMPERATURE == 0.7


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"DATABASE_URL": "sqlite:///test.db"}, "must be a PostgreSQL connection string"),
        ({"ANTHROPIC_API_KEY": "invalid-key"}, "must start with 'sk-ant-'"),
        ({"CHUNK_SIZE": 50}, "too small"),
        ({"CHUNK_SIZE": 800, "CHUNK_OVERLAP": 900}, "must be less than CHUNK_SIZE"),
        ({"DATABASE_POOL_SIZE": 0}, "DATABASE_POOL_SIZE must be at least 1"),
        ({"DATABASE_MAX_OVERFLOW": -1}, "DATABASE_MAX_OVERFLOW cannot be negative"),
        ({"NATS_URL": "localhost:4222"}, "NATS_URL must be nats://"),
        ({"LOCAL_MODEL_TEMPERATURE": -0.1}, "greater than or equal to 0"),
        ({"LOCAL_MODEL_TEMPERATURE": 2.5}, "less than or equal to 2"),
        ({"LOCAL_MODEL": "qwen-7b"}, "or the path of a .gguf file"),
    ],
)
def test_invalid_settings_are_refused_with_the_seeds_message(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        make(**values)


def test_valid_urls_and_keys_are_accepted() -> None:
    s = make(
        DATABASE_URL="postgresql+asyncpg://a:b@db:5432/amelia",
        ANTHROPIC_API_KEY="sk-ant-abc",
        NATS_URL="nats://a:4222,nats://b:4222",
    )
    assert s.ANTHROPIC_API_KEY.get_secret_value() == "sk-ant-abc"
    assert "sk-ant-abc" not in repr(s)  # secrets never printed


def test_environment_helpers() -> None:
    assert make(ENVIRONMENT=Environment.DEVELOPMENT).is_development
    assert make(ENVIRONMENT="testing").is_testing
    assert make(ENVIRONMENT="production").is_production


def test_without_a_token_services_bind_loopback_only() -> None:
    assert make(HOST="0.0.0.0").bind_host == "127.0.0.1"
    assert make(HOST="0.0.0.0", AMELIA_API_TOKEN="secret").bind_host == "0.0.0.0"


def test_lists_from_environment_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "http://a.test, http://b.test")
    assert Settings(_env_file=None).CORS_ORIGINS == ["http://a.test", "http://b.test"]  # type: ignore[call-arg]


def test_env_example_lists_every_setting_and_loads() -> None:
    example = Path(__file__).parents[2] / ".env.example"
    names = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", example.read_text(), re.MULTILINE))
    missing = set(Settings.model_fields) - names
    assert not missing, f".env.example lacks {sorted(missing)}"
    loaded = Settings(_env_file=example)  # type: ignore[call-arg]
    assert loaded.DATABASE_URL == "" and loaded.GIT_WORKTREE_DIR is None
