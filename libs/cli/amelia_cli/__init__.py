"""The `amelia` command: start the mesh, check it, and drive it over gRPC."""
