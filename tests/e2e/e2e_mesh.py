"""A real mesh started the way a user starts it: `amelia up` in a subprocess, with its own data
directory (embedded PostgreSQL + NATS) and free ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amelia_common.embedded import free_port

GRPC_SERVICES = {
    "EVENTS_GRPC_PORT": "amelia.v1.EventService",
    "AGENTS_GRPC_PORT": "amelia.v1.AgentService",
    "RAG_GRPC_PORT": "amelia.v1.RagService",
}


def make_mesh_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("up")
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


def start(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "amelia_cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(env["AMELIA_DATA_DIR"]).parent,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"amelia up exited: {proc.stdout.read() if proc.stdout else ''}"
        if amelia(env, "status").returncode == 0:
            return proc
        time.sleep(2)
    proc.kill()
    raise AssertionError("mesh did not become SERVING")


def stop(proc: subprocess.Popen[str], env: dict[str, str]) -> str:
    state = json.loads((Path(env["AMELIA_DATA_DIR"]) / "run" / "mesh.json").read_text())
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, output
    for pid in state["services"].values():
        assert not alive(pid), f"service pid {pid} left running"
    nats_pid = int((Path(env["AMELIA_DATA_DIR"]) / "nats" / "nats-server.pid").read_text())
    assert not alive(nats_pid), "nats-server left running"
    return output


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie is gone as far as a user is concerned.
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
