"""Scale-out tests: a real 3-node NATS JetStream cluster on loopback (started once for the
session, `amelia_common.nats_cluster`), the session's PostgreSQL, and service replicas as real
processes. Streams are kept on all 3 nodes (R3)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amelia_common.nats_cluster import NatsCluster
from amelia_common.settings import Settings

# The run-queue fault helpers (bursts of runs, waiting for them, terminal events in the log).
sys.path.insert(0, str(Path(__file__).parent.parent / "agents"))


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    root = Path(tempfile.mkdtemp(prefix=f"amelia-nats-{tmp_path_factory.getbasetemp().name}-"))
    cluster = NatsCluster.on_free_ports(root, 3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster_settings(infra: Any, nats_cluster: NatsCluster) -> Settings:
    settings: Settings = infra.settings(
        NATS_URL=nats_cluster.url, EVENTS_STREAM_REPLICAS=3, RUNS_QUEUE_REPLICAS=3
    )
    return settings
