"""A service of the mesh that cannot be reached: the gateway answers 503 with a google.rpc.Status
naming it, whatever words gRPC used for it (the gRPC code and the channel's state decide, never
the text): a refused connection, a socket closed under a call, a name that does not resolve."""

from __future__ import annotations

from typing import Any

import httpx
from gateway_helpers import start_gateway

from amelia_common.settings import Settings
from amelia_events.server import build_service

UNAVAILABLE = 14


def _unavailable(reply: httpx.Response) -> str:
    assert reply.status_code == 503, (reply.status_code, reply.text)
    body: dict[str, Any] = reply.json()
    assert body["code"] == UNAVAILABLE, body
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.RequestInfo", body
    message: str = body["message"]
    return message


async def test_events_service_stopped_is_503_naming_it(
    gateway_settings: Settings, infra: Any
) -> None:
    events = await build_service(infra.settings())
    await events.start()
    address = f"127.0.0.1:{events.bound_port}"
    values = {**gateway_settings.model_dump(), "EVENTS_ADDRESS": address}
    gateway = await start_gateway(Settings(_env_file=None, **values))  # type: ignore[call-arg]
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            assert (await http.get("/v1/events")).status_code == 200  # the channel is up
            await events.stop(grace=1.0)
            for path in ("/v1/events", "/v1/events:stream"):
                message = _unavailable(await http.get(path))
                assert message.startswith(f"the events service at {address} is unavailable ("), (
                    path,
                    message,
                )
    finally:
        await gateway.stop()
        await events.stop(grace=0)


async def test_a_name_that_does_not_resolve_is_the_service_unavailable(
    gateway_settings: Settings,
) -> None:
    """gRPC says 'errors resolving …' (a compose service whose container is gone): no word of
    connecting in it, and still the service named, for each service of the mesh alike."""
    addresses = {
        "EVENTS_ADDRESS": "events.invalid:50051",
        "AGENTS_ADDRESS": "agents.invalid:50052",
        "RAG_ADDRESS": "rag.invalid:50053",
    }
    values = {**gateway_settings.model_dump(), **addresses}
    gateway = await start_gateway(Settings(_env_file=None, **values))  # type: ignore[call-arg]
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            for path, name in (
                ("/v1/events", "events"),
                ("/v1/agents", "agents"),
                ("/v1/documents", "rag"),
            ):
                message = _unavailable(await http.get(path))
                assert message.startswith(f"the {name} service at {name}.invalid:"), message
                assert "resolv" in message, message  # gRPC's own words kept, in parentheses
    finally:
        await gateway.stop()
