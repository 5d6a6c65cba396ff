"""The mesh's Prometheus metrics: every name in one place, served at `/metrics`.

Each service process serves its metrics over HTTP (`serve`, on `<SERVICE>_METRICS_PORT`; the
gateway on its own HTTP port). Names are the contract of `deploy/grafana` and
`deploy/prometheus` and of docs/observability.md: change them together. Labels stay of bounded
cardinality (RPC method, status code, provider, run status, workflow name) — never a run id.

Values that live elsewhere (a gateway's open sockets, an event log's publish counts, the run
table) are read when Prometheus scrapes or sampled by the process that owns them, so the hot paths
only ever add to a counter.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from amelia_common.logging import get_logger

log = get_logger("amelia.metrics")

# -- gRPC (the shared server interceptor) -------------------------------------------------------
RPC_DURATION = Histogram(
    "amelia_rpc_duration_seconds",
    "gRPC calls served, by full method and status code (a stream counts when it ends).",
    ["method", "code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# -- health (every gRPC service) ----------------------------------------------------------------
SERVING = Gauge(
    "amelia_service_serving",
    "1 while the service reports SERVING on grpc.health.v1 (all its dependencies answer).",
    ["service"],
)
DEPENDENCY_UP = Gauge(
    "amelia_dependency_up",
    "1 while a service's dependency answers its probe (postgres, nats, workers, ...).",
    ["service", "dependency"],
)

# -- runs and their queue (agents) ---------------------------------------------------------------
RUNS = Gauge("amelia_runs", "Runs in the database, by status and workflow.", ["status", "workflow"])
RUN_QUEUE_DEPTH = Gauge(
    "amelia_run_queue_depth", "Jobs in the JetStream run queue not yet delivered to a worker."
)
RUN_QUEUE_IN_FLIGHT = Gauge(
    "amelia_run_queue_in_flight", "Jobs delivered to a worker and not acknowledged yet."
)
RUN_QUEUE_OLDEST_AGE = Gauge(
    "amelia_run_queue_oldest_age_seconds", "Age of the oldest QUEUED run (0: none waiting)."
)
RUNS_LEFT = Counter(
    "amelia_run_pickups_total",
    "Run pick-ups by a worker, by how they left it (completed, failed, paused, ...).",
    ["workflow", "outcome"],
)
WORKER_LOOPS = Gauge(
    "amelia_worker_loops", "Worker loops alive in this process, busy with a run or idle.", ["state"]
)
WORKERS_CAN_WORK = Gauge(
    "amelia_workers_can_work",
    "1 while this process's worker loops can run runs (all alive, PostgreSQL and NATS up).",
)

# -- models (agents) -----------------------------------------------------------------------------
LLM_REQUESTS = Counter("amelia_llm_requests_total", "Model calls, by provider.", ["provider"])
LLM_ERRORS = Counter(
    "amelia_llm_errors_total", "Model calls that failed, by provider.", ["provider"]
)
LLM_TOKENS = Counter(
    "amelia_llm_tokens_total",
    "Tokens in and out of models, by provider.",
    ["provider", "direction"],
)
LLM_FIRST_TOKEN = Histogram(
    "amelia_llm_time_to_first_token_seconds",
    "Time from a model call to its first streamed token, by provider.",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LLM_SLOT_WAITING = Gauge(
    "amelia_llm_slot_waiting_calls",
    "Model calls waiting for a free slot of the local model server (agents/llm/slots.py).",
)

# -- rag -----------------------------------------------------------------------------------------
EMBEDDED_CHUNKS = Counter("amelia_embedding_chunks_total", "Texts embedded (chunks and queries).")


class _PerObjectCollector(Collector):
    """Sums values read from live objects (weakly held) when Prometheus scrapes."""

    def __init__(self, read: Callable[[Iterable[Any]], Iterable[Any]]) -> None:
        self._objects: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._read = read

    def add(self, obj: Any) -> None:
        with self._lock:
            self._objects.add(obj)

    def collect(self) -> Iterable[Any]:
        with self._lock:
            objects = list(self._objects)
        return self._read(objects)


def _event_log_families(event_logs: Iterable[Any]) -> Iterable[Any]:
    stats = [event_log.stats for event_log in event_logs]
    published = CounterMetricFamily(
        "amelia_events_published", "Events this process stored in the event log."
    )
    published.add_metric([], sum(s.published for s in stats))
    refused = CounterMetricFamily(
        "amelia_events_publish_failures",
        "Events this process could not store (NATS unreachable, buffer full).",
    )
    refused.add_metric([], sum(s.refused for s in stats))
    waiting = GaugeMetricFamily(
        "amelia_events_publish_waiting", "Publishes waiting for NATS JetStream right now."
    )
    waiting.add_metric([], sum(s.waiting for s in stats))
    return [published, refused, waiting]


def _gateway_families(gateways: Iterable[Any]) -> Iterable[Any]:
    gateways = list(gateways)
    sockets = GaugeMetricFamily("amelia_ws_connections", "Open WebSocket connections.")
    sockets.add_metric([], sum(len(g.connections) for g in gateways))
    # Consumer lag of the sockets: messages waiting in their send queues (WS_SEND_QUEUE each),
    # in all and in the one furthest behind (per socket would be unbounded cardinality).
    queued = [c.queued for g in gateways for c in list(g.connections.values())]
    lag = GaugeMetricFamily(
        "amelia_ws_send_queue_messages", "Messages waiting to be sent to WebSocket clients."
    )
    lag.add_metric([], sum(queued))
    worst = GaugeMetricFamily(
        "amelia_ws_send_queue_max_messages", "Messages waiting for the WebSocket furthest behind."
    )
    worst.add_metric([], max(queued, default=0))
    streams = GaugeMetricFamily("amelia_http_streams", "Open NDJSON streams over HTTP.")
    streams.add_metric([], sum(len(g.http_streams) for g in gateways))
    counters = CounterMetricFamily(
        "amelia_gateway_events",
        "Gateway happenings (refused sockets, slow clients, ...).",
        labels=["kind"],
    )
    totals: dict[str, int] = {}
    for gateway in gateways:
        for kind, value in gateway.counters.items():
            totals[kind] = totals.get(kind, 0) + int(value)
    for kind, value in sorted(totals.items()):
        counters.add_metric([kind], value)
    return [sockets, lag, worst, streams, counters]


_EVENT_LOGS = _PerObjectCollector(_event_log_families)
_GATEWAYS = _PerObjectCollector(_gateway_families)
REGISTRY.register(_EVENT_LOGS)
REGISTRY.register(_GATEWAYS)


def track_event_log(event_log: Any) -> None:
    """Count an `EventLog`'s publishes (its `stats`: published, refused, waiting)."""
    _EVENT_LOGS.add(event_log)


def track_gateway(gateway: Any) -> None:
    """Count a gateway's WebSocket connections (`connections`) and `counters`."""
    _GATEWAYS.add(gateway)


_served: dict[int, str] = {}
_serve_lock = threading.Lock()


def serve(port: int, host: str, what: str) -> bool:
    """Serve `/metrics` on `host:port` from a background thread (once per process and port).

    A port another process holds is logged and skipped: metrics are never worth a service that
    does not start. Returns whether this process serves them there.
    """
    if port <= 0:
        return False
    with _serve_lock:
        if port in _served:
            return True
        try:
            start_http_server(port, addr=host)
        except OSError as exc:
            log.warning("metrics not served: port in use", port=port, setting=what, error=str(exc))
            return False
        _served[port] = what
    log.info("metrics served", address=f"http://{host}:{port}/metrics")
    return True


def exposition() -> tuple[bytes, str]:
    """This process's metrics in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
