"""The API token on HTTP and WebSocket requests.

HTTP clients send `Authorization: Bearer <token>` or `X-API-Key: <token>`. Browsers cannot set
headers on a WebSocket, so a socket may instead offer the subprotocol `bearer.<token>` (next to
`amelia.v1`); the gateway then answers with `amelia.v1` when offered, else echoes the one it
used, because a browser drops a connection whose subprotocol answer is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers

PROTOCOL = "amelia.v1"
BEARER_PROTOCOL_PREFIX = "bearer."


def header_token(headers: Headers) -> str:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key", "").strip()


def protocol_token(subprotocols: Sequence[str]) -> tuple[str, str]:
    """(token, the offered protocol that carried it) from `bearer.<token>`, if offered."""
    for protocol in subprotocols:
        if protocol.startswith(BEARER_PROTOCOL_PREFIX):
            return protocol[len(BEARER_PROTOCOL_PREFIX) :], protocol
    return "", ""


def chosen_subprotocol(subprotocols: Sequence[str]) -> str | None:
    """The subprotocol to answer with: `amelia.v1` if offered, else the bearer one, else none."""
    if PROTOCOL in subprotocols:
        return PROTOCOL
    _, carrier = protocol_token(subprotocols)
    return carrier or None
