"""The `amelia up` running for this folder, found by its `run/mesh.json`: one way for the CLI
and for a process joining that mesh (`python -m amelia_agents.worker`), so a worker added to
a running local mesh needs no hand-exported settings (as a `temporal worker` points at its
server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amelia_common.embedded import free_port, port_is_free, process_alive
from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger(__name__)

# The settings a joining process takes from mesh.json, each when the user did not set it.
STREAM_REPLICAS = ("EVENTS_STREAM_REPLICAS", "RUNS_QUEUE_REPLICAS")
JOINED_ADDRESSES = {
    "EVENTS_ADDRESS": "EVENTS_GRPC_PORT",
    "AGENTS_ADDRESS": "AGENTS_GRPC_PORT",
    "RAG_ADDRESS": "RAG_GRPC_PORT",
}


def state_file(data_dir: Path) -> Path:
    return data_dir / "run" / "mesh.json"


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """What a running `amelia up` wrote under `data_dir`, if its process is still alive."""
    try:
        state: dict[str, Any] = json.loads(state_file(data_dir).read_text())
        running = process_alive(int(state["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if running else None


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


def join_running_mesh(settings: Settings) -> Settings:
    """Settings pointing at the running `amelia up`'s PostgreSQL, NATS, services, stream
    copies and local model, each where the user set none (said in one log line); unchanged
    when no mesh runs for this folder."""
    state = find_running_mesh(settings)
    if not state:
        return settings
    given = settings.model_fields_set
    data_dir = Path(state.get("data_dir", settings.data_dir))
    updates: dict[str, Any] = {} if "AMELIA_DATA_DIR" in given else {"AMELIA_DATA_DIR": data_dir}
    replicas = state.get("stream_replicas") or {}
    updates.update(
        (name, int(replicas[name]))
        for name in STREAM_REPLICAS
        if name in replicas and name not in given
    )
    addresses = state.get("addresses") or {}
    ports = state.get("ports") or {}
    host = "127.0.0.1"
    for setting, port_setting in JOINED_ADDRESSES.items():
        if setting in given:
            continue
        if addresses.get(setting):
            updates[setting] = ",".join(addresses[setting])
        elif port_setting in ports:
            updates[setting] = f"{host}:{ports[port_setting]}"
    # The URLs where none is set (an empty one in `.env` too), as `ensure_infrastructure` reads them.
    urls = {
        "DATABASE_URL": state.get("database_url"),
        "NATS_URL": state.get("nats_url"),
        "LOCAL_MODEL_URL": (state.get("local_model") or {}).get("url"),
    }
    updates.update(
        (name, str(url)) for name, url in urls.items() if url and not getattr(settings, name)
    )
    log.info(
        "joining the running mesh (amelia up)",
        mesh=str(state_file(data_dir)),
        settings=sorted(updates),
    )
    return settings.model_copy(update=updates)


def metrics_port_or_free(
    wanted: int, host: str, setting: str, taken: frozenset[int] = frozenset()
) -> int:
    """`wanted` when free (0 stays off), else a free port, said in one log line: a port another
    process holds (a mesh's worker on the default one) must not leave this one without
    metrics."""
    if not wanted or (wanted not in taken and port_is_free(wanted, host)):
        return wanted
    port = free_port()
    log.warning(
        "metrics port in use; serving on another", setting=setting, wanted=wanted, port=port
    )
    return port
