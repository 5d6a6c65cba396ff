"""`/healthz` (is the gateway process up) and `/v1/status` (is the mesh behind it up).

`/v1/status` asks each service's grpc.health.v1 for the service and for its dependencies (the
services publish `dependency/nats`, `dependency/postgres` entries), so NATS and PostgreSQL are
reported as the services see them, the gateway never connects to them itself. The local model
server (llama.cpp, an OpenAI-compatible HTTP server) is asked directly, as the agents service
calls it: its URL, whether it serves, its model, threads, slots, pid and log, or why none runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from amelia_common.grpc_server import DEPENDENCY_PREFIX
from amelia_common.llama_server import local_model_report
from amelia_gateway.errors import GatewayError, error_response
from amelia_gateway.http_api import gateway_of, request_id, require_token
from amelia_gateway.state import Gateway
from amelia_gateway.upstream import DEPENDENCIES, Upstream

PROBE_TIMEOUT = 2.0


async def healthz(request: Request) -> Response:
    gateway = gateway_of(request)
    if gateway.stopping.is_set():
        return JSONResponse({"status": "stopping"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def _service(upstream: Upstream) -> dict[str, Any]:
    names = DEPENDENCIES.get(upstream.service, ())
    results = await asyncio.gather(
        upstream.health(PROBE_TIMEOUT),
        *(upstream.health_of(DEPENDENCY_PREFIX + dep, PROBE_TIMEOUT) for dep in names),
    )
    status, *deps = results
    return {
        "address": upstream.address,
        "status": status,
        "dependencies": {
            dep: ("UNKNOWN" if status == "UNREACHABLE" else result)
            for dep, result in zip(names, deps, strict=True)
        },
    }


def _combined(reports: dict[str, dict[str, Any]], dep: str) -> str:
    """One dependency's status across the services that use it: SERVING only if all say so."""
    seen = [r["dependencies"][dep] for r in reports.values() if dep in r["dependencies"]]
    known = [s for s in seen if s not in ("UNKNOWN", "NOT_FOUND", "SERVICE_UNKNOWN")]
    if not known:
        return "UNKNOWN"
    return "SERVING" if all(s == "SERVING" for s in known) else "NOT_SERVING"


async def mesh_status(gateway: Gateway) -> dict[str, Any]:
    upstreams = list(gateway.upstreams.by_service.values())
    reports, local_model = await asyncio.gather(
        asyncio.gather(*(_service(u) for u in upstreams)),
        asyncio.to_thread(local_model_report, gateway.settings, PROBE_TIMEOUT),
    )
    services = {u.name: report for u, report in zip(upstreams, reports, strict=True)}
    # The services' health; the local model has its own (a run on it fails saying it is down).
    overall = "SERVING" if all(r["status"] == "SERVING" for r in reports) else "DEGRADED"
    if gateway.stopping.is_set():
        overall = "STOPPING"
    return {
        "status": overall,
        "services": services,
        "nats": _combined(services, "nats"),
        "postgres": _combined(services, "postgres"),
        "localModel": local_model.as_dict(),
        "gateway": gateway.stats(),
    }


async def status(request: Request) -> Response:
    gateway = gateway_of(request)
    rid = request_id(request)
    try:
        require_token(gateway, request)
    except GatewayError as exc:
        return error_response(exc, rid)
    return JSONResponse(await mesh_status(gateway), headers={"X-Request-Id": rid})
