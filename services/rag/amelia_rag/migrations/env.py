"""Alembic environment of the rag service (its history lives in `alembic_version_rag`)."""

from amelia_common.migrations import run_env
from amelia_rag.models import Base

run_env(Base.metadata)
