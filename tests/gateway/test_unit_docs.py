"""docs/gateway.md against what the gateway serves, so the reference never drifts again."""

from __future__ import annotations

import re
from pathlib import Path

from amelia_gateway.routes import ROUTES

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
# A row of the Routes table: | GET | `/v1/runs/{run}` | AgentService.GetRun | — |
_ROW = re.compile(r"^\| (GET|POST|PATCH|PUT|DELETE) \| `(/v1/[^`]*)` \| (\w+)\.(\w+)")


def documented_routes() -> set[tuple[str, str, str, str]]:
    return {
        (m.group(1), m.group(2), m.group(3), m.group(4))
        for line in DOC.read_text().splitlines()
        if (m := _ROW.match(line))
    }


def test_every_route_the_gateway_serves_is_in_the_docs_table() -> None:
    served = {(r.method, r.template, r.service, r.rpc) for r in ROUTES}
    documented = documented_routes()
    assert served - documented == set(), "served, missing from docs/gateway.md's Routes table"
    assert documented - served == set(), "in docs/gateway.md's table, not served"
