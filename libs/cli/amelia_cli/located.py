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


def given_up(state: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The units of a running mesh (its mesh.json) its `amelia up` gave up on, by name."""
    units = (state or {}).get("units") or {}
    return {name: unit for name, unit in units.items() if unit.get("state") == "FAILED"}


def supervisor_words(service: str, address: str) -> str:
    """What the running `amelia up` knows of a service a command could not reach, as what to
    do: given up on (QA s26: five `kill -9` in a minute, and every command said "is the mesh
    running?" while `amelia up` refused to start, being running) or being restarted; "" when
    it runs, or no `amelia up` runs here."""
    try:
        _, state = running_mesh()
    except Exception:  # noqa: BLE001 - an unreadable mesh.json: the usual words, not a crash
        return ""
    units = (state or {}).get("units") or {}
    name, unit = next(
        ((n, u) for n, u in units.items() if address and u.get("address") == address),
        (service, units.get(service)),
    )
    if not state or not isinstance(unit, dict):
        return ""
    last = f"; last: {unit['last_exit']}" if unit.get("last_exit") else ""
    log = f"; its log: {unit['log']}" if unit.get("log") else ""
    if unit.get("state") == "RESTARTING":
        return f" — `amelia up` (pid {state.get('pid')}) is starting it again{last}{log}"
    if unit.get("state") != "FAILED":
        return ""
    restarts = int(unit.get("restarts") or 0)
    again = (
        "`amelia up` in another terminal starts it again"
        if state.get("revive_signal")
        else "stop `amelia up` (Ctrl-C in its terminal, or `amelia down`) and run it again"
    )
    return (
        f" — `amelia up` (pid {state.get('pid')}) gave up on {name} after {restarts} "
        f"restart{'s' if restarts != 1 else ''}: it kept crashing{last}{log}. {again}"
    )
