"""`amelia status`: the mesh at a glance, on 80 columns.

- every replica of every service (each address of a comma list or of a `dns:///` name) and its
  health, NATS, PostgreSQL and the local model (`health.probe_all`);
- the NATS cluster: each stream's leader and whether its copies are current, asked of NATS
  itself; with a cluster `amelia up --cluster` runs, each node and the JetStream meta leader;
- the run queue, from the agents service's GetRunQueue: jobs waiting, runs queued (and the
  oldest one's wait), runs running, worker loops busy and ready (polling the queue), and each
  worker process with its busy loops;
- on the local model's line, the model calls waiting for one of its slots: the sum of the gauge
  `amelia_llm_slot_waiting_calls` of every agents process `amelia up` runs (each one's
  `/metrics`, from mesh.json: the count lives in each process, `amelia_agents/llm/slots.py`).
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from amelia.v1 import agents_pb2, agents_pb2_grpc
from amelia_cli.health import Probe, StreamState, probe_all, stream_states
from amelia_cli.mesh import SERVICES, client_target
from amelia_common.grpc_client import aio_channel
from amelia_common.nats_cluster import NatsCluster
from amelia_common.settings import Settings

AGENTS = next(spec for spec in SERVICES if spec.name == "agents")
SLOT_WAITING_GAUGE = "amelia_llm_slot_waiting_calls"
_AGENTS_UNIT = re.compile(rf"{AGENTS.name}(-\d+)?")
METRICS_SECONDS = 2.0


# A file or folder named in a part's detail: a log (the local model's, a given-up service's),
# PostgreSQL's socket folder.
_LOG_PATH = re.compile(r"(?<=log: )\S+|(?<=socket: )\S+")


def endpoints_table(probes: list[Probe]) -> Group:
    """One row per part of the mesh (per replica of a service). An address is never split:
    at 80 columns with `--replicas 2` rich folded the widest column, the address, mid-port
    (`grpc://127.0.0.1:500` / `56`) and replicas could not be told apart; the detail column
    wraps instead, and a list of addresses (a NATS cluster's) takes a line each. The log files
    the details name are listed under the table, each whole on its line (in a detail cell a
    path was cut mid-name: `…/llama/l` `lama-server.log`)."""
    table = Table(title="Amelia mesh", title_justify="left")
    table.add_column("part")
    table.add_column("address", no_wrap=True, overflow="ellipsis")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    logs: list[str] = []

    def noted(match: re.Match[str]) -> str:
        logs.append(match.group(0))
        return f"[{len(logs)}]"

    for p in probes:
        colour = "green" if p.ok else "red"
        detail = _LOG_PATH.sub(noted, p.detail)
        address = Text(p.address.replace(", ", "\n"))
        table.add_row(p.name, address, Text(p.status, style=colour), Text(detail))
    notes = [Text(f"[{i}] {path}", overflow="ignore") for i, path in enumerate(logs, 1)]
    return Group(table, *notes)


def _copy(node: str, current: bool, behind: int) -> str:
    return f"{node} current" if current else f"{node} [red]behind {behind}[/red]"


def streams_table(streams: list[StreamState]) -> Table:
    table = Table(title="NATS streams (as their leader sees them)", title_justify="left")
    for column in ("stream", "leader", "copies", "messages"):
        table.add_column(column)
    for s in streams:
        copies = ", ".join(_copy(*copy) for copy in s.copies) or "one copy (R1)"
        table.add_row(s.stream, s.leader or "[red]none[/red]", copies, str(s.messages))
    return table


def nodes_table(cluster: NatsCluster) -> Table:
    table = Table(title=f"NATS cluster under {cluster.root}", title_justify="left")
    for column in ("node", "url", "pid", "meta leader"):
        table.add_column(column)
    silent = []
    for node in cluster.status():
        up = node["pid"] is not None
        if up and not node["answers"]:
            silent.append(node["name"])
            leader = "[red]no answer[/red]"
        else:
            leader = node["meta_leader"] or ("[red]none[/red]" if up else "-")
        table.add_row(
            node["name"], node["url"], str(node["pid"]) if up else "[red]down[/red]", leader
        )
    if silent:
        table.caption = (
            f"{', '.join(silent)}: running but not answering (frozen or overloaded); "
            "clients move to the other nodes within ~6 s"
        )
        table.caption_justify = "left"
    return table


def _seconds(duration: Any) -> str:
    return f"{duration.seconds + duration.nanos / 1e9:.0f}s"


def queue_table(queue: agents_pb2.GetRunQueueResponse) -> Table:
    table = Table(title="Run queue", title_justify="left")
    table.add_column("what")
    table.add_column("now")
    table.add_row("queue", queue.queue)
    oldest = f" (oldest waits {_seconds(queue.oldest_queued_age)})" if queue.queued_runs else ""
    table.add_row("jobs waiting", str(queue.waiting_jobs))
    table.add_row("runs queued", f"{queue.queued_runs}{oldest}")
    table.add_row("waiting behind a thread's run", str(queue.waiting_behind_runs))
    table.add_row("runs running", str(len(queue.in_flight)))
    # Idle loops poll the queue; busy ones hold a run (each process that holds one is below).
    busy = sum(worker.busy_loops for worker in queue.workers)
    table.add_row("workers", f"{busy} busy, {queue.polling_workers} ready")
    for worker in queue.workers:
        health = "" if worker.healthy else ", [red]no heartbeat[/red]"
        table.add_row(f"  {worker.name}", f"{worker.busy_loops} busy{health}")
    return table


async def run_queue(
    settings: Settings, state: dict[str, Any] | None
) -> agents_pb2.GetRunQueueResponse | str:
    """GetRunQueue of the agents service, or why it could not be read."""
    address = client_target(settings, AGENTS, state)
    async with aio_channel(address, settings) as channel:
        try:
            return await agents_pb2_grpc.AgentServiceStub(channel).GetRunQueue(
                agents_pb2.GetRunQueueRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return f"the agents service at {address} does not answer"
            return f"{exc.code().name}: {exc.details()}"


async def _streams(settings: Settings) -> list[StreamState] | str:
    try:
        return await stream_states(settings, [settings.EVENTS_STREAM, settings.RUNS_QUEUE_STREAM])
    except Exception as exc:  # noqa: BLE001 - shown as why
        return str(exc) or type(exc).__name__


def _gauge(url: str, name: str) -> float | None:
    """The value of the gauge `name` at the Prometheus endpoint `url`; None if unknown."""
    try:
        with urllib.request.urlopen(url, timeout=METRICS_SECONDS) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


async def slot_waiting_calls(state: dict[str, Any] | None) -> int | None:
    """Model calls of the mesh's agents processes waiting for a slot of the local model (their
    gauges summed, from mesh.json's units); None when none of them says."""
    urls = []
    for name, unit in ((state or {}).get("units") or {}).items():
        port = unit.get("metrics_port")
        if port and _AGENTS_UNIT.fullmatch(name):  # `agents`, and `agents-2`… of --replicas
            host = str(unit.get("address") or "").rpartition(":")[0] or "127.0.0.1"
            urls.append(f"http://{host}:{port}/metrics")
    values = await asyncio.gather(
        *(asyncio.to_thread(_gauge, url, SLOT_WAITING_GAUGE) for url in urls)
    )
    known = [v for v in values if v is not None]
    return int(sum(known)) if known else None


def with_slot_waiting(probes: list[Probe], waiting: int | None) -> list[Probe]:
    """The local model's line saying how many calls wait for one of its slots."""
    if waiting is None:
        return probes
    said = f"{waiting} waiting for a slot"
    return [
        replace(p, detail=f"{p.detail}, {said}" if p.detail else said)
        if p.name == "local-model" and p.status == "SERVING"
        else p
        for p in probes
    ]


async def gather(
    settings: Settings, state: dict[str, Any] | None
) -> tuple[list[Probe], list[StreamState] | str, agents_pb2.GetRunQueueResponse | str]:
    """Everything `amelia status` shows, asked at once."""
    no_nats = "NATS_URL unknown (no mesh running here)"
    streams: Any = _streams(settings) if settings.NATS_URL else asyncio.sleep(0, no_nats)
    probes, states, queue, waiting = await asyncio.gather(
        probe_all(settings, state), streams, run_queue(settings, state), slot_waiting_calls(state)
    )
    return with_slot_waiting(probes, waiting), states, queue


def show(console: Console, settings: Settings, state: dict[str, Any] | None) -> bool:
    """Print the status; whether every part is up."""
    probes, streams, queue = asyncio.run(gather(settings, state))
    console.print(endpoints_table(probes))
    if isinstance(streams, str):
        console.print(f"NATS streams: {streams}")
    else:
        console.print(streams_table(streams))
    root = (state or {}).get("nats_cluster")
    cluster = NatsCluster.load(Path(root)) if root else None
    if cluster is not None:
        console.print(nodes_table(cluster))
    if isinstance(queue, str):
        console.print(f"Run queue: unavailable ({queue})")
    else:
        console.print(queue_table(queue))
    return all(p.ok for p in probes)
