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
    assert (s.RAG_TOP_K, s.RAG_SIMILARITY_THRESHOLD) == (5, 0.7)
    assert (s.WS_HEARTBEAT_INTERVAL, s.WS_MAX_CONNECTIONS) == (30, 100)
    assert s.DATABASE_URL == "" and s.NATS_URL == ""  # empty: embedded servers


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
