"""Fixtures for end-to-end tests: a real mesh started with `amelia up` (see e2e_helpers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import (
    DEADLINE,
    METRICS_PORTS,
    SECRETS,
    TOKEN,
    amelia,
    leaks,
    make_mesh_env,
    standalone_worker,
)
from otlp_receiver import OtlpReceiver

from amelia_cli.supervisor import state_file
from amelia_common.embedded import free_port, log_tail


@pytest.fixture
def mesh_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_mesh_env(tmp_path_factory)


@pytest.fixture(scope="package")
def receiver() -> Iterator[OtlpReceiver]:
    """Where the folder's mesh exports its traces (a collector's OTLP/HTTP endpoint)."""
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="package")
def running_mesh(
    tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver
) -> Iterator[dict[str, str]]:
    """One `amelia up --detach` for the folder (test_amelia_up, test_cli, test_observability,
    then test_supervision, which ends it with a Ctrl-C, starts it again on its data and stops
    it with `amelia down`): starting a mesh is the slow part of these tests. It runs with an
    API token, provider keys and DEBUG logging, exports its traces to `receiver`, serves
    /metrics on ports of its own, and runs no worker loops in the agents service: runs are
    executed by one standalone worker process (`python -m amelia_agents.worker`, the scaled-out
    deployment; WORKER_PID, its log WORKER_LOG). `amelia down` at the end if it still runs."""
    env = make_mesh_env(tmp_path_factory) | {name: str(free_port()) for name in METRICS_PORTS}
    env |= {
        "AMELIA_API_TOKEN": TOKEN,
        "ANTHROPIC_API_KEY": SECRETS[1],
        "OPENAI_API_KEY": SECRETS[2],
        "DEFAULT_MODEL": "offline:echo",
        "LOG_LEVEL": "DEBUG",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "AGENT_WORKERS": "0",
    }
    started = amelia(env, "up", "--detach", timeout=DEADLINE + 120)
    up_log = Path(env["AMELIA_DATA_DIR"]) / "logs" / "amelia-up.log"
    assert started.returncode == 0, started.stdout + started.stderr + log_tail(up_log, 40)
    assert not leaks(started.stdout + started.stderr, SECRETS)  # not a terminal: no ?token=
    try:
        with standalone_worker(env) as (worker_pid, worker_log):
            yield env | {"WORKER_PID": str(worker_pid), "WORKER_LOG": str(worker_log)}
    finally:
        if state_file(Path(env["AMELIA_DATA_DIR"])).exists():
            amelia(env, "down", timeout=DEADLINE)
