"""AgentService: agents, threads and durable runs of LangGraph workflows."""

import amelia_common  # noqa: F401 - first, before grpc: it turns gRPC's fork handlers off
