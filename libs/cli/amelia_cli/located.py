"""Where the mesh is, one way for every command: an `*_ADDRESS` the user set, else the
`mesh.json` of the `amelia up` running for this folder (its replicas, ports, URLs, data dir),
else the settings' `*_GRPC_PORT` on this host (`mesh.client_target` is the rule)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amelia_cli.mesh import SERVICES, client_target, service_address
from amelia_common.running_mesh import find_running_mesh
from amelia_common.settings import Settings, get_settings


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


def addresses_over_mesh(settings: Settings, state: dict[str, Any] | None) -> list[str]:
    """Each `*_ADDRESS` the user set that sends the CLI elsewhere than the running
    `amelia up` would (said, so that the choice is seen, not guessed)."""
    if not state:
        return []
    notes = []
    for spec in SERVICES:
        setting = spec.address_setting
        if not setting or setting not in settings.model_fields_set:
            continue
        recorded = (state.get("addresses") or {}).get(setting)
        mesh = ",".join(recorded) if recorded else service_address(settings, spec)
        given = str(getattr(settings, setting))
        if given != mesh:
            notes.append(f"{setting}={given} is set: used instead of {mesh} (amelia up here)")
    return notes
