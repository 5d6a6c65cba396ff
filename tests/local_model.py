"""The local embedding model (all-MiniLM-L6-v2), loaded once per test session and shared by
every suite that starts a RAG service (loading it takes seconds)."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def local_model() -> Any:
    from amelia_rag.embeddings import load_local_model

    return load_local_model()
