"""Services a benchmark starts as processes of their own, as they are deployed.

A service sharing the benchmark's process would share its one Python thread with the publisher
and every client, and be charged for their work (and they for its): a gRPC path would look
slower than it is next to a bare NATS path whose server (nats-server) runs apart anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from amelia_common.embedded import stop_child


@contextlib.asynccontextmanager
async def service_process(args: list[str], env: dict[str, str], cwd: Path) -> AsyncIterator[Any]:
    """`python <args>` with `env`, its output in `<cwd>/<last arg>.log`; stopped on exit (the
    log's tail is printed if it did not stop cleanly)."""
    log = (cwd / f"{args[-1]}.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, cwd=cwd, stdout=log, stderr=log
    )
    try:
        yield process
    finally:
        await stop_child(process)
        log.close()
        if process.returncode not in (0, -15):
            print(
                f"{args[-1]} exited {process.returncode}:",
                (cwd / f"{args[-1]}.log").read_text()[-2000:],
            )


async def wait_serving(address: str, what: str = "events service") -> None:
    """Until the gRPC health check at `address` says SERVING (a minute at most)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} at {address} did not become healthy")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) process `pid` has used so far, from
    /proc/<pid>/stat (Linux; clock ticks, 10 ms apart: read it over many runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
