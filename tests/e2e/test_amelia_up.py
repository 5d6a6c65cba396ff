"""`amelia up` as a user runs it: embedded PostgreSQL + NATS, four services, SERVING.

The folder's mesh (`running_mesh`: `amelia up --detach` in a subprocess with its own data
directory and free ports) starts here; every service's API is listed with the real grpcurl and
`amelia status` shows every part. Stopping it with Ctrl-C is the last test of
test_supervision.py, and starting it again on the same data (then `amelia down`) the one after
it: one first start (which creates the database, the slow part) for the whole folder. A mesh in
the foreground, stopped with Ctrl-C, is test_local_model_mesh's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import GRPC_SERVICES, amelia

pytestmark = pytest.mark.slow


def test_up_serves_every_api(running_mesh: dict[str, str]) -> None:
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"
    for port_name, service in GRPC_SERVICES.items():
        listed = subprocess.run(
            [grpcurl, "-plaintext", f"127.0.0.1:{running_mesh[port_name]}", "list"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        assert {service, "grpc.health.v1.Health"} <= set(listed), listed
        assert any(name.startswith("grpc.reflection.") for name in listed), listed
    status = amelia(running_mesh, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    for part in ("events", "agents", "rag", "gateway", "nats", "postgres"):
        assert part in status.stdout
    assert "UNREACHABLE" not in status.stdout
    again = amelia(running_mesh, "up", "--detach")
    assert again.returncode == 1 and "already running" in again.stderr
