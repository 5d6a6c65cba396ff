"""`amelia up` as a user runs it: embedded PostgreSQL + NATS, four services, SERVING, Ctrl-C.

Runs the real command in a subprocess with its own data directory and free ports, lists every
service's API with the real grpcurl, stops it with SIGINT, and starts it again to find the same
data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.embedded import free_port

pytestmark = pytest.mark.slow

GRPC_SERVICES = {
    "EVENTS_GRPC_PORT": "amelia.v1.EventService",
    "AGENTS_GRPC_PORT": "amelia.v1.AgentService",
    "RAG_GRPC_PORT": "amelia.v1.RagService",
}


@pytest.fixture
def mesh_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
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
    }
    yield env


def amelia(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amelia_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(env["AMELIA_DATA_DIR"]).parent,
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
        assert not _alive(pid), f"service pid {pid} left running"
    nats_pid = int((Path(env["AMELIA_DATA_DIR"]) / "nats" / "nats-server.pid").read_text())
    assert not _alive(nats_pid), "nats-server left running"
    return output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie is gone as far as a user is concerned.
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False


def publish(env: dict[str, str]) -> int:
    with grpc.insecure_channel(env["EVENTS_ADDRESS"]) as ch:
        reply = events_pb2_grpc.EventServiceStub(ch).PublishEvent(
            events_pb2.PublishEventRequest(
                event=events_pb2.Event(type="system.warning", subject="runs/e2e")
            ),
            timeout=10,
        )
    return reply.event.sequence


def get(env: dict[str, str], sequence: int) -> events_pb2.Event:
    with grpc.insecure_channel(env["EVENTS_ADDRESS"]) as ch:
        return (
            events_pb2_grpc.EventServiceStub(ch)
            .GetEvent(events_pb2.GetEventRequest(name=f"events/{sequence}"), timeout=10)
            .event
        )


def test_up_serves_every_api_stops_cleanly_and_keeps_its_data(mesh_env: dict[str, str]) -> None:
    proc = start(mesh_env)
    try:
        grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"
        for port_name, service in GRPC_SERVICES.items():
            listed = subprocess.run(
                [grpcurl, "-plaintext", f"127.0.0.1:{mesh_env[port_name]}", "list"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.split()
            assert {service, "grpc.health.v1.Health"} <= set(listed), listed
            assert any(name.startswith("grpc.reflection.") for name in listed), listed
        sequence = publish(mesh_env)
        status = amelia(mesh_env, "status")
        for part in ("events", "agents", "rag", "gateway", "nats", "postgres"):
            assert part in status.stdout
        assert "UNREACHABLE" not in status.stdout
    finally:
        stop(proc, mesh_env)
    assert amelia(mesh_env, "status").returncode == 1  # everything is down now

    proc = start(mesh_env)
    try:
        assert get(mesh_env, sequence).subject == "runs/e2e"
    finally:
        stop(proc, mesh_env)
