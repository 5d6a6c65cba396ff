"""Metadata filters through the gateway, against the real agents and rag services.

QA L5: `metadataFilter[team]=bulk&metadataFilter[team]=qa` kept the last value; a map key given
twice is now a 400 as a field given twice is."""

from __future__ import annotations

from gateway_helpers import Mesh


async def test_a_map_key_twice_in_the_query_string_is_a_400_naming_it(mesh: Mesh) -> None:
    for path in ("/v1/threads", "/v1/threads:count", "/v1/documents"):
        reply = await mesh.http.get(f"{path}?metadataFilter[team]=bulk&metadataFilter[team]=qa")
        assert reply.status_code == 400, reply.text
        status = reply.json()  # google.rpc.Status
        assert (status["code"], status["message"]) == (
            3,
            "query parameter 'metadataFilter[team]' is given more than once",
        )
        assert status["details"][0]["@type"].endswith("google.rpc.RequestInfo")
