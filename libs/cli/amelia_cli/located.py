"""Where the mesh is, one way for every command: the `mesh.json` of the `amelia up` running for
this folder first (its ports, URLs, data dir), else the settings (each `*_ADDRESS` defaulting to
its `*_GRPC_PORT` on this host)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amelia_cli.health import client_target
from amelia_cli.mesh import SERVICES
from amelia_cli.supervisor import read_state
from amelia_common.settings import Settings, get_settings


def find_running_mesh(settings: Settings) -> dict[str, Any] | None:
    """`mesh.json` of the running `amelia up`: under AMELIA_DATA_DIR when it is set (or
    absolute); with the default, under this folder or the nearest parent that has one, the way
    git finds `.git`."""
    configured = settings.AMELIA_DATA_DIR.expanduser()
    if "AMELIA_DATA_DIR" in settings.model_fields_set or configured.is_absolute():
        return read_state(settings.data_dir)
    here = Path.cwd()
    for folder in (here, *here.parents):
        state = read_state((folder / configured).resolve())
        if state:
            return state
    return None


def running_mesh() -> tuple[Settings, dict[str, Any] | None]:
    """Settings, with the data dir, ports and URLs of a running `amelia up` filled in when it
    is found (URLs only where none are configured)."""
    settings = get_settings()
    state = find_running_mesh(settings)
    if state:
        updates: dict[str, Any] = {
            "AMELIA_DATA_DIR": Path(state.get("data_dir", settings.data_dir))
        }
        if not settings.DATABASE_URL:
            updates["DATABASE_URL"] = str(state.get("database_url", ""))
        if not settings.NATS_URL:
            updates["NATS_URL"] = str(state.get("nats_url", ""))
        ports = state.get("ports") or {}
        updates.update(
            (spec.port_setting, int(ports[spec.port_setting]))
            for spec in SERVICES
            if spec.port_setting in ports
        )
        settings = settings.model_copy(update=updates)
    return settings, state


def service_target(name: str) -> tuple[Settings, str]:
    """The settings and address a command dials to reach the service `name`."""
    settings, state = running_mesh()
    spec = next(spec for spec in SERVICES if spec.name == name)
    return settings, client_target(settings, spec, state)
