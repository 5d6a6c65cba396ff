"""Fixtures for end-to-end tests: a real mesh started with `amelia up` (see e2e_helpers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import DEADLINE, SECRETS, TOKEN, amelia, leaks, make_mesh_env

from amelia_cli.supervisor import state_file
from amelia_common.embedded import log_tail


@pytest.fixture
def mesh_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_mesh_env(tmp_path_factory)


@pytest.fixture(scope="package")
def running_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One `amelia up --detach` for the folder (test_amelia_up, test_cli, then test_supervision,
    which ends it with a Ctrl-C, starts it again on its data and stops it with `amelia down`),
    with an API token, provider keys and DEBUG logging: starting a mesh is the slow part of
    these tests. `amelia down` at the end if it still runs."""
    env = make_mesh_env(tmp_path_factory) | {
        "AMELIA_API_TOKEN": TOKEN,
        "ANTHROPIC_API_KEY": SECRETS[1],
        "OPENAI_API_KEY": SECRETS[2],
        "LOG_LEVEL": "DEBUG",
    }
    started = amelia(env, "up", "--detach", timeout=DEADLINE + 120)
    up_log = Path(env["AMELIA_DATA_DIR"]) / "logs" / "amelia-up.log"
    assert started.returncode == 0, started.stdout + started.stderr + log_tail(up_log, 40)
    assert not leaks(started.stdout + started.stderr, SECRETS)  # not a terminal: no ?token=
    yield env
    if state_file(Path(env["AMELIA_DATA_DIR"])).exists():
        amelia(env, "down", timeout=DEADLINE)
