"""RagService: documents in, cited passages out.

Parsing (Markdown, HTML, PDF, code, text), chunking with exact offsets, local embeddings
(sentence-transformers, offline) or an OpenAI-compatible endpoint, and pgvector + PostgreSQL
full-text hybrid search.
"""

import amelia_common  # noqa: F401 - first, before grpc: it turns gRPC's fork handlers off
