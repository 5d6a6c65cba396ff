"""`mesh`: the three services on their own PostgreSQL and NATS, shared by the suites that stop
those servers (test_service_outages) or fill them with random data (test_rpc_fuzz), so neither
touches the session's servers and the mesh starts once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from mesh_helpers import Mesh, own_mesh


@pytest.fixture(scope="session")
async def mesh(tmp_path_factory: pytest.TempPathFactory, infra: Any) -> AsyncIterator[Mesh]:
    settings = infra.settings(EVENTS_PUBLISH_TIMEOUT_SECONDS=5.0)
    async with own_mesh(tmp_path_factory.mktemp("mesh"), settings) as running:
        yield running
