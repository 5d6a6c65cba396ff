"""Shared code of every Amelia service: settings, logging, gRPC bootstrap, NATS, database, events."""
