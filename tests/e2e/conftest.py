"""Fixtures for end-to-end tests: a real mesh started with `amelia up` (see e2e_helpers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_helpers import make_mesh_env, start, stop


@pytest.fixture
def mesh_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_mesh_env(tmp_path_factory)


@pytest.fixture(scope="module")
def running_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One mesh for a whole test module; stopped (and checked for leftovers) at the end."""
    env = make_mesh_env(tmp_path_factory)
    proc = start(env)
    yield env
    stop(proc, env)
