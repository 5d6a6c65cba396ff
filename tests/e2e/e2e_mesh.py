"""A real mesh started the way a user starts it: `amelia up` in a subprocess, with its own data
directory (embedded PostgreSQL + NATS) and free ports."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from amelia_common.embedded import free_port, process_alive

GRPC_SERVICES = {
    "EVENTS_GRPC_PORT": "amelia.v1.EventService",
    "AGENTS_GRPC_PORT": "amelia.v1.AgentService",
    "RAG_GRPC_PORT": "amelia.v1.RagService",
}


def mesh_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder for one mesh, removed when the session ends; outside pytest's own
    temporary root. Run as root, the embedded PostgreSQL runs as another user, which must be able
    to traverse the path to its data; every pytest session that starts makes
    `/tmp/pytest-of-<user>` private again (0700), so a PostgreSQL started or restarted under it
    while other suites start fails at random."""
    root = Path(tempfile.mkdtemp(prefix=f"amelia-e2e-{tmp_path_factory.getbasetemp().name}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def make_mesh_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = mesh_root(tmp_path_factory)
    ports = {name: str(free_port()) for name in (*GRPC_SERVICES, "PORT", "EMBEDDED_NATS_PORT")}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")} | ports
    env |= {
        "AMELIA_DATA_DIR": str(root / "data"),
        "EVENTS_ADDRESS": f"127.0.0.1:{ports['EVENTS_GRPC_PORT']}",
        "AGENTS_ADDRESS": f"127.0.0.1:{ports['AGENTS_GRPC_PORT']}",
        "RAG_ADDRESS": f"127.0.0.1:{ports['RAG_GRPC_PORT']}",
        "LOG_LEVEL": "INFO",
        "AGENT_WORKERS": "1",
        "COLUMNS": "200",  # a roomy terminal, so tables print resource names whole
        # The code workflow: repositories under the mesh's folder, a stand-in for Claude Code.
        "CODE_ALLOWED_ROOTS": str(root),
        "CLAUDE_CODE_PATH": str(_stand_in_claude(root)),
    }
    return env


def _stand_in_claude(root: Path) -> Path:
    """A tiny CLI in Claude Code's place: edits a file and says so (its last argument is the prompt)."""
    script = root / "claude"
    script.write_text(
        '#!/bin/sh\nfor prompt; do :; done\necho "$prompt" >> NOTES.md\n'
        'echo "wrote NOTES.md for: $prompt"\n'
    )
    script.chmod(0o755)
    return script


def amelia(
    env: dict[str, str], *args: str, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amelia_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or Path(env["AMELIA_DATA_DIR"]).parent,
    )


def start(env: dict[str, str], *, own_session: bool = False) -> subprocess.Popen[str]:
    """`amelia up`, waited for until `amelia status` says every part is SERVING. With
    `own_session` it leads its own process group, as a command typed on a terminal does, so a
    test can send the group a Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "amelia_cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(env["AMELIA_DATA_DIR"]).parent,
        start_new_session=own_session,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"amelia up exited: {proc.stdout.read() if proc.stdout else ''}"
        if amelia(env, "status").returncode == 0:
            return proc
        time.sleep(2)
    proc.kill()
    raise AssertionError("mesh did not become SERVING")


def mesh_state(env: dict[str, str]) -> dict[str, Any]:
    """What the running `amelia up` wrote in `run/mesh.json`."""
    state: dict[str, Any] = json.loads(
        (Path(env["AMELIA_DATA_DIR"]) / "run" / "mesh.json").read_text()
    )
    return state


def mesh_pids(env: dict[str, str]) -> dict[str, int]:
    """The pid of every part of the mesh that runs now (services, nats, postgres)."""
    units = mesh_state(env)["units"]
    return {name: unit["pid"] for name, unit in units.items() if unit["pid"]}


def stop(proc: subprocess.Popen[str], env: dict[str, str]) -> str:
    """Ctrl-C, then check that nothing of the mesh is left running."""
    pids = mesh_pids(env)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    for name, pid in pids.items():
        assert not alive(pid), f"{name} (pid {pid}) left running"
    return output


alive = process_alive  # a zombie is gone as far as a user is concerned


def leaks(text: str, secrets: Iterable[str]) -> list[str]:
    """Lines of `text` holding a secret, in any form we know one to take (URL-quoted,
    JSON-escaped)."""
    forms = {f for s in secrets for f in (s, quote(s), quote(s, safe=""), quote_plus(s))}
    forms |= {json.dumps(f)[1:-1] for f in forms}
    return [line for line in text.splitlines() if any(f in line for f in forms)]
