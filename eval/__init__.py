"""`make eval`: retrieval quality of the rag service against plain pipelines on a real manual."""

import amelia_common  # noqa: F401 - first, before grpc: it turns gRPC's fork handlers off
