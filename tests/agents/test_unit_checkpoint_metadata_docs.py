"""Every `amelia_*` key the service writes into checkpoint metadata is documented (QA s27b L10).

GetThreadState and ListThreadHistory show a checkpoint's metadata whole, LangGraph's keys and the
service's; QA found `amelia_request_digest`, `amelia_request` and `amelia_as_node` there with no
word about them. They stay shown (the dashboard reads them, a history is filtered by them), so
docs/agents.md's "Checkpoint metadata" table names each one; a key added to the code without a
row fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from amelia_agents import checkpoints, stateupdate, steps, threadstate

DOC = Path(__file__).resolve().parents[2] / "docs" / "agents.md"
EXECUTOR = Path(steps.__file__).with_name("executor.py")

WRITTEN = {
    steps.RUN_KEY,
    steps.FORK_RUN_KEY,
    steps.FORK_CHECKPOINT_KEY,
    stateupdate.AS_NODE_KEY,
    checkpoints.CONTINUED_KEY,
    threadstate._REQUEST_KEY,
    threadstate._DIGEST_KEY,
}


def _documented() -> set[str]:
    """The keys named in the first column of docs/agents.md's checkpoint metadata table."""
    text = DOC.read_text()
    section = text[text.index("**Checkpoint metadata**") :]
    keys: set[str] = set()
    for line in section.splitlines()[1:]:
        if line.startswith("### "):
            break
        if line.startswith("| `amelia_"):
            keys |= set(re.findall(r"`(amelia_\w+)`", line.split("|")[1]))
    return keys


def test_every_checkpoint_metadata_key_the_service_writes_is_documented() -> None:
    # The executor tags a run's checkpoints with a literal: it must be the key steps reads.
    assert f'"{steps.RUN_KEY}"' in EXECUTOR.read_text()
    assert all(key.startswith("amelia_") for key in WRITTEN)
    documented = _documented()
    assert WRITTEN - documented == set(), "written to checkpoint metadata, not documented"
    assert documented - WRITTEN == set(), "documented, not written by the service"
