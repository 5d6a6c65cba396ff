"""Workflows a run can execute; importing this package registers the built-ins: `echo`
(builtin.py), `chat` and the hidden `agent` graph (chat.py), `plan` (plan.py), `code` (code.py), `develop`
(develop.py).
"""

# Imported for their side effect: each module registers its workflows.
from amelia_agents.workflows import builtin as _builtin  # noqa: F401
from amelia_agents.workflows import chat as _chat  # noqa: F401
from amelia_agents.workflows import code as _code  # noqa: F401
from amelia_agents.workflows import develop as _develop  # noqa: F401
from amelia_agents.workflows import plan as _plan  # noqa: F401
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
