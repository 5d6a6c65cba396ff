"""Which mesh the CLI talks to (`mesh.client_target`, one rule for every command): an
`*_ADDRESS` the user set wins; else the running `amelia up`'s mesh.json (every replica); else
`*_GRPC_PORT` on this host. mesh.json still beats the default ports (session 9: the CLI talked
to another mesh on 50051 while the one `amelia up` ran here listened elsewhere)."""

from __future__ import annotations

from typing import Any

import pytest

from amelia_cli.located import addresses_over_mesh
from amelia_cli.mesh import SERVICES, client_target
from amelia_common.settings import Settings

EVENTS = next(spec for spec in SERVICES if spec.name == "events")
GATEWAY = next(spec for spec in SERVICES if spec.name == "gateway")
MESH: dict[str, Any] = {
    "pid": 1,
    "ports": {"EVENTS_GRPC_PORT": 41001, "PORT": 41010},
    "addresses": {"EVENTS_ADDRESS": ["127.0.0.1:41001", "127.0.0.1:41002"]},
}


@pytest.fixture(autouse=True)
def no_address_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EVENTS_ADDRESS", "AGENTS_ADDRESS", "RAG_ADDRESS", "EVENTS_GRPC_PORT", "PORT"):
        monkeypatch.delenv(name, raising=False)


def settings() -> Settings:
    """Settings as a command reads them: from the environment, no `.env`."""
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_an_address_the_user_sets_wins_over_the_running_mesh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTS_ADDRESS", "10.0.0.5:50051,10.0.0.6:50051")
    assert client_target(settings(), EVENTS, MESH) == "10.0.0.5:50051,10.0.0.6:50051"
    note = addresses_over_mesh(settings(), MESH)
    assert note == [
        "EVENTS_ADDRESS=10.0.0.5:50051,10.0.0.6:50051 is set: used instead of "
        "127.0.0.1:41001,127.0.0.1:41002 (amelia up here)"
    ]


def test_the_running_mesh_gives_every_replica_and_beats_the_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert client_target(settings(), EVENTS, MESH) == "127.0.0.1:41001,127.0.0.1:41002"
    monkeypatch.setenv("EVENTS_GRPC_PORT", "50061")
    assert client_target(settings(), EVENTS, MESH) == "127.0.0.1:41001,127.0.0.1:41002"
    assert addresses_over_mesh(settings(), MESH) == []


def test_a_mesh_json_without_addresses_gives_its_port() -> None:
    older = {"pid": 1, "ports": {"EVENTS_GRPC_PORT": 41001}}
    # located.running_mesh copies mesh.json's ports into the settings.
    running = settings().model_copy(update={"EVENTS_GRPC_PORT": 41001})
    assert client_target(running, EVENTS, older) == "127.0.0.1:41001"


def test_without_a_mesh_the_port_setting_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert client_target(settings(), EVENTS, None) == "127.0.0.1:50051"
    monkeypatch.setenv("EVENTS_GRPC_PORT", "50061")
    assert client_target(settings(), EVENTS, None) == "127.0.0.1:50061"
    monkeypatch.setenv("EVENTS_ADDRESS", "127.0.0.1:50071")
    assert client_target(settings(), EVENTS, None) == "127.0.0.1:50071"


def test_an_address_set_to_what_the_mesh_runs_is_no_news(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTS_ADDRESS", "127.0.0.1:41001,127.0.0.1:41002")
    assert addresses_over_mesh(settings(), MESH) == []
    assert addresses_over_mesh(settings(), None) == []


def test_the_gateway_is_found_by_its_port() -> None:
    running = settings().model_copy(update={"PORT": 41010})
    assert client_target(running, GATEWAY, MESH) == "127.0.0.1:41010"
