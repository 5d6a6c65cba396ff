"""EventService: Amelia's event log on NATS JetStream, streamed over gRPC."""

import amelia_common  # noqa: F401 - first, before grpc: it turns gRPC's fork handlers off
