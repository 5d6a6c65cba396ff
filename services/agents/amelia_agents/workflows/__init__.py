"""Workflows a run can execute; importing this package registers the built-ins."""

from amelia_agents.workflows import builtin as _builtin  # noqa: F401 - registers built-ins
from amelia_agents.workflows.registry import (
    AGENT_WORKFLOW,
    InvalidInputError,
    Workflow,
    get,
    listed,
    load_plugins,
    names,
    register,
)

__all__ = [
    "AGENT_WORKFLOW",
    "InvalidInputError",
    "Workflow",
    "get",
    "listed",
    "load_plugins",
    "names",
    "register",
]
