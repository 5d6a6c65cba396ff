"""The `amelia` command: start the mesh, check it, and drive it over gRPC."""

import amelia_common  # noqa: F401 - first, before grpc: it turns gRPC's fork handlers off
