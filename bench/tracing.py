"""Tracing bench: the cost of OpenTelemetry tracing (every span sampled and exported) on the run
path, next to the same runs with tracing off, in one process, rounds of each alternating.

Starts its own embedded PostgreSQL and nats-server, the events service and the agents service
(in-process workers), and times CreateRun → run.completed on StreamRun for a chain of nodes that
each call the offline model (bench/agents.py's workflow). Off is as shipped when
OTEL_EXPORTER_OTLP_ENDPOINT is unset; on exports over OTLP/HTTP to a local receiver that accepts
and drops the spans. The agents service is started again for each round, so its server
interceptor and channels are those of the mode. Target: at most 10% slower traced.
"""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from amelia.v1 import agents_pb2_grpc
from amelia_agents.server import build_service as build_agents
from amelia_common import telemetry
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings
from bench._run import run_in_temp_dir
from bench.agents import RUNS, WARMUP, events_mesh, register, stats, time_mesh

NODES = 3
ROUNDS = 2  # off and on alternate, so a machine getting busier weighs on both alike
OFF, ON = "tracing off", "tracing on (100% sampled, OTLP/HTTP)"
TARGET_OVERHEAD = 0.10


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts every export (the collector's side is not timed)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _switch_tracing(on: bool) -> None:
    """Tracing on or off between rounds (the provider stays; what `start` turned on is gated)."""
    telemetry._state["tracing"] = on
    telemetry.instrument_grpc_clients(on)


async def _timed(settings: Settings, workflow: str) -> tuple[list[float], list[float], float]:
    """Run the bench's runs against a freshly started agents service: their times, times to
    first token, and this process's CPU seconds per run (less swayed by a busy machine)."""
    agents = await build_agents(settings)
    port = await agents.start()
    channel = aio_channel(f"127.0.0.1:{port}", settings)
    try:
        cpu = time.process_time()
        totals, first = await time_mesh(agents_pb2_grpc.AgentServiceStub(channel), workflow)
        return totals, first, (time.process_time() - cpu) / (RUNS + WARMUP)
    finally:
        await channel.close()
        await agents.stop(1.0)


async def bench(root: Path) -> None:
    async with events_mesh(root, "tracing", AGENTS_METRICS_PORT=0) as settings:
        await _bench(settings)


async def _bench(settings: Settings) -> None:
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    workflow = register(NODES)
    os.environ[telemetry.ENDPOINT_VARIABLE] = f"http://127.0.0.1:{sink.server_port}"
    os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
    telemetry.start(settings, "bench")
    try:
        samples: dict[str, tuple[list[float], list[float], list[float]]] = {
            OFF: ([], [], []),
            ON: ([], [], []),
        }
        for label in (OFF, ON) * ROUNDS:
            _switch_tracing(label == ON)
            totals, first, cpu = await _timed(settings, workflow)
            samples[label][0].extend(totals)
            samples[label][1].extend(first)
            samples[label][2].append(cpu)
        telemetry.shutdown()
        rows = [
            (label, *stats(totals), stats(first)[0], sum(cpu) / len(cpu) * 1000)
            for label, (totals, first, cpu) in samples.items()
        ]
        print(
            f"{NODES}-node chain, offline provider, {ROUNDS} rounds of {RUNS} runs per mode "
            f"(after {WARMUP} warm-up), modes alternating, load average {os.getloadavg()[0]:.1f}"
        )
        header = (
            f"{'':<38} | {'run ms':>8} | {'p95 ms':>8} | {'first token ms':>14} | "
            f"{'CPU ms/run':>10}"
        )
        print(header)
        print("-" * len(header))
        for label, mean, p95, first_token, cpu_ms in rows:
            print(
                f"{label:<38} | {mean:>8.2f} | {p95:>8.2f} | {first_token:>14.2f} | {cpu_ms:>10.2f}"
            )
        wall, cpu_cost = rows[1][1] / rows[0][1] - 1, rows[1][4] / rows[0][4] - 1
        met = "met" if wall <= TARGET_OVERHEAD else "NOT met"
        print(
            f"\ntracing overhead on the run path: {wall:+.1%} run time, {cpu_cost:+.1%} CPU "
            f"(target <= 10% run time: {met})"
        )
    finally:
        sink.shutdown()


def main() -> None:
    run_in_temp_dir(bench, "tracing")


if __name__ == "__main__":
    main()
