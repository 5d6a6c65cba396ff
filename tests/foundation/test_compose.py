"""docker-compose.yml runs the same mesh: checked by construction, since no Docker engine runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from amelia_cli.mesh import SERVICES
from amelia_common.settings import Settings

ROOT = Path(__file__).parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_infrastructure_images_and_health_checks() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("pgvector/pgvector:pg16")
    assert services["nats"]["image"].startswith("nats")
    assert "-js" in services["nats"]["command"]
    for name in ("postgres", "nats"):
        assert services[name]["healthcheck"]["test"]


def test_every_mesh_service_is_built_wired_and_health_checked() -> None:
    services = compose()["services"]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    for spec in SERVICES:
        svc = services[spec.name]
        assert svc["build"]["args"]["SERVICE"] == spec.name
        port = spec.port(defaults)
        assert f"{port}:{port}" in svc["ports"]
        env = svc["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["NATS_URL"] == "nats://nats:4222"
        assert env[spec.port_setting] == str(port)
        unknown = set(env) - set(Settings.model_fields) - {"<<"}
        assert not unknown, f"{spec.name} sets unknown variables {unknown}"
        check = " ".join(svc["healthcheck"]["test"])
        assert (spec.grpc_service in check) if spec.grpc_service else "/healthz" in check
        for other in SERVICES:
            address = env[f"{other.name.upper()}_ADDRESS"] if other.grpc_service else None
            if address:
                assert address == f"{other.name}:{other.port(defaults)}"


def test_dockerfile_builds_any_service_from_the_repo() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG SERVICE" in dockerfile
    assert "services/${SERVICE}" in dockerfile
    for spec in SERVICES:
        assert (ROOT / "services" / spec.name / "pyproject.toml").exists()


def test_every_mesh_service_is_restarted_when_it_stops() -> None:
    """A service stops itself when NATS closes its connection for good (docs/events.md): compose
    must start it again, as `amelia up` and Kubernetes do (QA s24: no restart policy at all)."""
    services = compose()["services"]
    for name in [spec.name for spec in SERVICES] + ["local-model"]:
        assert services[name].get("restart") == "unless-stopped", name
