"""Scale-out tests: a real 3-node NATS JetStream cluster on loopback (started once for the
session, `amelia_common.nats_cluster`), the session's PostgreSQL, and service replicas as real
processes. Streams are kept on all 3 nodes (R3)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from amelia_common.nats_cluster import NatsCluster
from amelia_common.settings import Settings

# The run-queue fault helpers (bursts of runs, waiting for them, terminal events in the log).
sys.path.insert(0, str(Path(__file__).parent.parent / "agents"))


@pytest.fixture(scope="session")
def nats_cluster(scratch_root: Callable[[str], Path]) -> Iterator[NatsCluster]:
    cluster = NatsCluster.on_free_ports(scratch_root("amelia-nats"), 3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def cluster_settings(infra: Any, nats_cluster: NatsCluster) -> Settings:
    settings: Settings = infra.settings(
        NATS_URL=nats_cluster.url, EVENTS_STREAM_REPLICAS=3, RUNS_QUEUE_REPLICAS=3
    )
    return settings
