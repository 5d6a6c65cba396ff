"""EventService: Amelia's event log on NATS JetStream, streamed over gRPC."""
