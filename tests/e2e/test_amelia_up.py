"""`amelia up` as a user runs it: embedded PostgreSQL + NATS, four services, SERVING, Ctrl-C.

Runs the real command in a subprocess with its own data directory and free ports, lists every
service's API with the real grpcurl, stops it with SIGINT, and starts it again to find the same
data (detached, then `amelia down`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from e2e_helpers import GRPC_SERVICES, alive, amelia, start, stop

from amelia.v1 import events_pb2, events_pb2_grpc

pytestmark = pytest.mark.slow


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
    """In the foreground, stopped with Ctrl-C; then detached on the same data (one mesh for
    both: a first start, which creates the database, is the slow part)."""
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

    started = amelia(mesh_env, "up", "--detach", timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "amelia down" in started.stdout
    try:
        assert amelia(mesh_env, "status").returncode == 0
        assert get(mesh_env, sequence).subject == "runs/e2e"
        again = amelia(mesh_env, "up", "--detach")
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stopped = amelia(mesh_env, "down", timeout=120)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    nats_pid = int((Path(mesh_env["AMELIA_DATA_DIR"]) / "nats" / "nats-server.pid").read_text())
    assert not alive(nats_pid), "nats-server left running"
    assert amelia(mesh_env, "status").returncode == 1
    assert "not running" in amelia(mesh_env, "down").stdout
