"""A `local:` model is checked the same way at CreateAgent and at CreateRun (`input.model`): a
path must be a GGUF file (its magic bytes), a name one `amelia up` can serve; anything else is
INVALID_ARGUMENT naming the path, and nothing is stored or queued (QA s27 findings 6 and 8:
`local:/tmp/missing.gguf`, a text file and `/etc/passwd` were taken as agents' models, and
CreateRun took those and `local:nonexistent-model`, each run then failing — with the advice
"set LOCAL_MODEL=/tmp/missing.gguf", which would stop `amelia up`)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from agents_helpers import S, create_run, rpc_error

from amelia_agents.llm import local_provider


def bad_files(folder: Path) -> dict[str, str]:
    """A `local:` model each, and the words its refusal must hold."""
    text = folder / "fake.gguf"
    text.write_text("not a model\n")
    missing = folder / "missing.gguf"
    return {
        f"local:{missing}": f"{missing}: no such file",
        f"local:{text}": f"{text}: not a GGUF file",
        "local:/etc/passwd": "/etc/passwd: not a GGUF file",
        f"local:{folder}/": f"{folder}: not a file",
    }


async def test_an_agent_naming_a_file_that_is_not_a_gguf_is_refused(
    agents: Any, tmp_path: Path
) -> None:
    for model, said in bad_files(tmp_path).items():
        agent_id = f"path-{uuid.uuid4().hex[:8]}"
        refused = await rpc_error(
            agents.CreateAgent(S.CreateAgentRequest(agent=S.Agent(model=model), agent_id=agent_id))
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, model
        assert said in (refused.details() or ""), refused.details()
        gone = await rpc_error(agents.GetAgent(S.GetAgentRequest(name=f"agents/{agent_id}")))
        assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_an_agent_naming_a_gguf_file_is_created(agents: Any, tmp_path: Path) -> None:
    gguf = tmp_path / "small.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    agent = S.Agent(model=f"local:{gguf}")
    created = await agents.CreateAgent(
        S.CreateAgentRequest(agent=agent, agent_id=f"gguf-{uuid.uuid4().hex[:8]}")
    )
    assert created.agent.model == f"local:{gguf}"


async def test_a_runs_input_model_is_checked_as_an_agents_model_is(
    agents: Any, tmp_path: Path
) -> None:
    cases = {
        **bad_files(tmp_path),
        "local:nonexistent-model": "the local model server serves 'local:qwen2.5-coder-0.5b'",
    }
    for model, said in cases.items():
        refused = await rpc_error(
            create_run(agents, workflow="workflows/chat", input={"message": "hi", "model": model})
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, model
        details = refused.details() or ""
        assert details.startswith("input.model: ") and said in details, details
    # A step's model of `plan` is checked the same way.
    missing = f"local:{tmp_path / 'missing.gguf'}"
    refused = await rpc_error(
        create_run(
            agents,
            workflow="workflows/plan",
            input={"message": "hi", "models": {"design": missing}},
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input.models.design: " in (refused.details() or ""), refused.details()


@pytest.mark.parametrize("name", ["missing.gguf", "/nowhere/model.gguf"])
def test_a_missing_file_is_not_advised_as_a_local_model_value(name: str) -> None:
    """The run's advice "set LOCAL_MODEL=<it> and restart 'amelia up'" is for what
    LOCAL_MODEL accepts: a file that is not there would stop `amelia up`."""
    assert not local_provider.servable(name)
