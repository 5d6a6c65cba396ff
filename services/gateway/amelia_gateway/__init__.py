"""Amelia's gateway: HTTP/JSON and WebSocket front door to the gRPC mesh.

`create_app(settings)` builds the ASGI app; `server.GatewayServer` runs it on uvicorn with a
graceful shutdown that tells sockets the server is going away.
"""

import amelia_common  # noqa: F401 - first, before grpc: it turns gRPC's fork handlers off
from amelia_gateway.app import create_app

__all__ = ["create_app"]
