"""A real mesh started the way a user starts it: `amelia up` in a subprocess, with its own data
directory (embedded PostgreSQL + NATS) and free ports."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from amelia_common.embedded import free_port, process_alive

T = TypeVar("T")

# The folder's shared mesh runs with an API token and provider keys: no log may hold them.
TOKEN = "e2e-Tok_4pL9xQ2vR7sK1mN8"
SECRETS = (TOKEN, "sk-ant-e2e-0123456789abcdef", "sk-openai-e2e-fedcba9876543210")

# Each service's Prometheus port, a standalone worker's included.
METRICS_PORTS = (
    "EVENTS_METRICS_PORT",
    "AGENTS_METRICS_PORT",
    "RAG_METRICS_PORT",
    "WORKER_METRICS_PORT",
)

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


def make_mesh_env(
    tmp_path_factory: pytest.TempPathFactory, *, local_model: bool = False
) -> dict[str, str]:
    """The environment of one mesh on free ports. Without `local_model` no model server runs
    (LOCAL_MODEL=off: these meshes name `offline:` models); with it, no provider key either, so
    the default model is the local one `amelia up` serves, as on a fresh machine."""
    root = mesh_root(tmp_path_factory)
    names = (*GRPC_SERVICES, "PORT", "EMBEDDED_NATS_PORT", "LOCAL_MODEL_PORT")
    ports = {name: str(free_port()) for name in names}
    inherited = ("DATABASE_URL", "NATS_URL", "LOCAL_MODEL_URL", "DEFAULT_MODEL")
    env = {k: v for k, v in os.environ.items() if k not in inherited} | ports
    if local_model:
        env |= {"LOCAL_MODEL": "qwen2.5-coder-0.5b", "ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": ""}
    else:
        env["LOCAL_MODEL"] = "off"
    env |= {
        "AMELIA_DATA_DIR": str(root / "data"),
        "EVENTS_ADDRESS": f"127.0.0.1:{ports['EVENTS_GRPC_PORT']}",
        "AGENTS_ADDRESS": f"127.0.0.1:{ports['AGENTS_GRPC_PORT']}",
        "RAG_ADDRESS": f"127.0.0.1:{ports['RAG_GRPC_PORT']}",
        "LOG_LEVEL": "INFO",
        "AGENT_WORKERS": "1",
        # What the tests kill comes back sooner (the policy's doubling and give-up unchanged).
        "RESTART_DELAY_SECONDS": "0.2",
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


def up_output(env: dict[str, str]) -> Path:
    """Where `start` sends what `amelia up` prints on its terminal."""
    return Path(env["AMELIA_DATA_DIR"]).parent / "amelia-up.out"


def start(env: dict[str, str], *, own_session: bool = False) -> subprocess.Popen[str]:
    """`amelia up` in the foreground, waited for until it prints its dashboard's address, which
    it does once every part is SERVING. With `own_session` it leads its own process group, as a
    command typed on a terminal does, so a test can send the group a Ctrl-C."""
    output = up_output(env)
    with output.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "amelia_cli", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=Path(env["AMELIA_DATA_DIR"]).parent,
            start_new_session=own_session,
        )

    def serving() -> bool:
        assert proc.poll() is None, f"amelia up exited: {output.read_text()}"
        return "Dashboard and HTTP API:" in output.read_text()

    try:
        wait_for(serving, "the mesh to be SERVING", timeout=300)
    except AssertionError:
        proc.kill()
        raise
    return proc


def mesh_state(env: dict[str, str]) -> dict[str, Any]:
    """What the running `amelia up` wrote in `run/mesh.json`."""
    state: dict[str, Any] = json.loads(
        (Path(env["AMELIA_DATA_DIR"]) / "run" / "mesh.json").read_text()
    )
    return state


def mesh_pids(env: dict[str, str]) -> dict[str, int]:
    """The pid of every part of the mesh that runs now (services, nats, postgres, the local
    model)."""
    units = mesh_state(env)["units"]
    return {name: unit["pid"] for name, unit in units.items() if unit["pid"]}


alive = process_alive  # a zombie is gone as far as a user is concerned

DEADLINE = 180.0  # seconds: generous, for a loaded 2-core machine


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ctrl_c_stop_order(env: dict[str, str], parts: list[str]) -> dict[str, int]:
    """Ctrl-C to the process group of `amelia up` (what a terminal sends), then, for each of
    `parts`, the tick at which its process was first seen gone; returns once `amelia up` exited.
    Give `parts` in the reverse of the expected order, so that a correct stop never looks
    wrong."""
    supervisor = int(mesh_state(env)["pid"])
    pids = mesh_pids(env)
    gone_at: dict[str, int] = {}
    os.killpg(supervisor, signal.SIGINT)
    tick = 0
    deadline = time.monotonic() + DEADLINE
    while len(gone_at) < len(parts) and time.monotonic() < deadline:
        for name in parts:
            if name not in gone_at and not alive(pids[name]):
                gone_at[name] = tick
        tick += 1
        time.sleep(0.005)
    wait_for(lambda: not alive(supervisor), "amelia up to exit")
    assert set(gone_at) == set(parts), f"left running: {set(parts) - set(gone_at)}"
    return gone_at


def leaks(text: str, secrets: Iterable[str]) -> list[str]:
    """Lines of `text` holding a secret, in any form we know one to take (URL-quoted,
    JSON-escaped)."""
    forms = {f for s in secrets for f in (s, quote(s), quote(s, safe=""), quote_plus(s))}
    forms |= {json.dumps(f)[1:-1] for f in forms}
    return [line for line in text.splitlines() if any(f in line for f in forms)]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, parsed with prometheus-client's parser."""
    text = httpx.get(url, timeout=30).raise_for_status().text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@contextlib.contextmanager
def standalone_worker(env: dict[str, str]) -> Iterator[tuple[int, Path]]:
    """`python -m amelia_agents.worker` (one loop) on the mesh's PostgreSQL and NATS, until its
    /metrics (WORKER_METRICS_PORT) says it can work; SIGTERM and waited for at the end (if still
    running). Yields its pid and its log's path."""
    state = mesh_state(env)
    worker_env = env | {
        "DATABASE_URL": state["database_url"],
        "NATS_URL": state["nats_url"],
        "AGENT_WORKERS": "1",
    }
    log_path = Path(env["AMELIA_DATA_DIR"]).parent / "worker.log"
    with log_path.open("wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "amelia_agents.worker"],
            env=worker_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics"

    def ready() -> bool:
        assert worker.poll() is None, log_path.read_text()[-3000:]
        try:
            return value(scrape(url), "amelia_workers_can_work") == 1
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, "the standalone worker", 180)
        yield worker.pid, log_path
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
