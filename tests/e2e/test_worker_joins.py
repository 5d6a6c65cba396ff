"""A worker added to a running `amelia up` with one command (`python -m amelia_agents.worker`
typed in the project's folder, nothing exported): it finds the mesh by its mesh.json, as every
`amelia` command does, and executes runs; with no mesh running, it starts nothing: one clear line.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import DEADLINE, amelia, make_mesh_env, wait_for

from amelia_common.embedded import free_port, log_tail

# What a user who only ran `amelia up` has not exported: the worker must find them itself.
NOT_EXPORTED = (
    "DATABASE_URL",
    "NATS_URL",
    "EVENTS_ADDRESS",
    "AGENTS_ADDRESS",
    "RAG_ADDRESS",
    "AMELIA_DATA_DIR",
    "WORKER_METRICS_PORT",
)


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A port another process listens on (the mesh's worker on the default metrics port)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        yield held.getsockname()[1]


def worker(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "amelia_agents.worker"],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_a_worker_started_in_the_folder_joins_amelia_up_and_runs_its_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = make_mesh_env(tmp_path_factory)
    folder = Path(env["AMELIA_DATA_DIR"]).parent
    # The mesh in the folder's default `.amelia`, running no worker loops of its own.
    env |= {"AMELIA_DATA_DIR": str(folder / ".amelia"), "AGENT_WORKERS": "0"}
    started = amelia(env, "up", "--detach", timeout=DEADLINE + 120)
    assert started.returncode == 0, started.stdout + started.stderr
    log = folder / "worker.log"
    process = None
    try:
        created = amelia(env, "agents", "create", "parrot", "--model", "offline:echo")
        assert created.returncode == 0, created.stderr
        with held_port() as metrics_port:
            typed_in = folder / "src"  # a subfolder: found as git finds `.git`
            typed_in.mkdir()
            worker_env = {k: v for k, v in env.items() if k not in NOT_EXPORTED}
            worker_env |= {"AGENT_WORKERS": "1", "WORKER_METRICS_PORT": str(metrics_port)}
            process = worker(worker_env, typed_in, log)

            ran = amelia(env, "run", "parrot", "polly wants a cracker", timeout=DEADLINE)
            assert ran.returncode == 0, ran.stdout + ran.stderr + log.read_text()[-3000:]
            assert "polly wants a cracker" in ran.stdout and "completed" in ran.stdout
            assert process.poll() is None, log.read_text()[-3000:]

            said = log.read_text()
            assert "joining the running mesh" in said and ".amelia/run/mesh.json" in said
            assert "metrics port in use; serving on another" in said
            assert "Traceback" not in said

            def ready_worker_counted() -> bool:
                status = amelia(env, "status")
                return status.returncode == 0 and "0 busy, 1 ready" in status.stdout

            wait_for(ready_worker_counted, "amelia status counting the joined worker")
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        amelia(env, "down", timeout=DEADLINE)
    assert process.returncode == 0, log_tail(log, 40)


@pytest.mark.parametrize("given", ["nothing", "DATABASE_URL alone"])
def test_with_no_mesh_running_the_worker_starts_nothing_and_says_what_to_do_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, given: str
) -> None:
    # A worker joins a mesh; it never starts one of its own. Started with the mesh stopped it
    # once started PostgreSQL on the mesh's data and NATS, took the mesh's runs and failed them
    # (no local model, no events or rag service: QA session 18).
    env = make_mesh_env(tmp_path_factory)
    data = Path(env["AMELIA_DATA_DIR"])
    env = {k: v for k, v in env.items() if k not in NOT_EXPORTED or k == "AMELIA_DATA_DIR"}
    if given == "DATABASE_URL alone":
        env["DATABASE_URL"] = "postgresql+asyncpg://postgres:@127.0.0.1:1/amelia"
    before = sorted(p.name for p in data.iterdir()) if data.exists() else []
    done = subprocess.run(
        [sys.executable, "-m", "amelia_agents.worker"],
        env=env,
        cwd=data.parent,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("amelia-agents-worker: no `amelia up` runs for "), last
    assert "NATS_URL" in last and "make run" in last, last
    assert (sorted(p.name for p in data.iterdir()) if data.exists() else []) == before
