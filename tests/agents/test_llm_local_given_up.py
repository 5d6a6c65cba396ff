"""A run whose local model server `amelia up` gave up on says so, and how to get it back (QA s27
finding 5: after the supervisor gave up, runs failed with "local: cannot reach …: Connection
error." and nothing more, while the docs promised advice).

The supervisor is the running `amelia up` of the data directory: its `run/mesh.json` (written
here as `Supervisor.state()` writes it, with this test's pid as the live supervisor) says the
`local-model` unit is FAILED; nothing listens on the model's port.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from amelia_agents.llm import ChatMessage, ChatRequest, ModelError, get_model
from amelia_agents.llm.reconnect import UnreachableModelError
from amelia_common.embedded import free_port
from amelia_common.running_mesh import state_file
from amelia_common.settings import DEFAULT_LOCAL_MODEL, Settings

REQUEST = ChatRequest(messages=[ChatMessage(role="user", content="Say hi.")])


def settings(data_dir: Path, port: int) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        AMELIA_DATA_DIR=data_dir,
        LOCAL_MODEL_URL="",
        LOCAL_MODEL_PORT=port,
        LLM_RECONNECT_SECONDS=0.3,
        LLM_RETRY_BACKOFF_SECONDS=0.05,
    )


def write_mesh(data_dir: Path, port: int, state: str) -> None:
    units = {
        "local-model": {
            "state": state,
            "pid": None,
            "restarts": 3,
            "crashes_in_window": 5,
            "last_exit": f"could not start: port {port} is in use by another process",
            "log": str(data_dir / "llama" / str(port) / "llama-server.log"),
        }
    }
    mesh = {
        "pid": os.getpid(),
        "data_dir": str(data_dir),
        "local_model": {"url": f"http://127.0.0.1:{port}/v1", "embedded": True, "off": ""},
        "units": units,
        "revive_signal": "SIGUSR1",
    }
    state_file(data_dir).parent.mkdir(parents=True, exist_ok=True)
    state_file(data_dir).write_text(json.dumps(mesh))


async def failure(data_dir: Path, port: int) -> str:
    model = get_model(f"local:{DEFAULT_LOCAL_MODEL}", settings(data_dir, port))
    with pytest.raises(ModelError) as caught:
        async for _ in model.stream(REQUEST):
            pass
    return str(caught.value)


async def test_a_run_on_a_server_given_up_on_says_to_run_amelia_up_again(tmp_path: Path) -> None:
    port = free_port()
    write_mesh(tmp_path, port, "FAILED")
    said = await failure(tmp_path, port)
    assert f"`amelia up` (pid {os.getpid()}) stopped restarting the local model server" in said
    assert "run `amelia up` again" in said and f"port {port} is in use" in said, said
    assert "'amelia up' starts it" not in said, said  # the advice for a mesh without a server
    # The context window is asked of the same server first (`/props`): its error says it too.
    model = get_model(f"local:{DEFAULT_LOCAL_MODEL}", settings(tmp_path, port))
    with pytest.raises(UnreachableModelError, match="stopped restarting the local model server"):
        await model.context_tokens()


async def test_a_server_being_restarted_is_said_so(tmp_path: Path) -> None:
    port = free_port()
    write_mesh(tmp_path, port, "RESTARTING")
    said = await failure(tmp_path, port)
    assert "`amelia up` is starting the local model server again" in said, said


async def test_without_a_supervisor_the_advice_is_how_to_start_one(tmp_path: Path) -> None:
    said = await failure(tmp_path, free_port())
    assert "'amelia up' starts it (LOCAL_MODEL)" in said, said
    assert "stopped restarting" not in said
