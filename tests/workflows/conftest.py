"""Built-in workflow tests: the real events, rag and agents services in process (port 0) on the
session's PostgreSQL and NATS, fake Anthropic/OpenAI servers speaking their streaming wire
formats, and a stand-in for the Claude Code CLI.

The agents service here has its own queue stream, so the agents suite's workers (alive for the
whole session) never take these runs.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from agents_fake_llm import FakeAnthropic, fake_anthropic, fake_openai
from agents_helpers import WorkerProcess, serve_agents
from workflows_helpers import CLAUDE_CODE_TIMEOUT, STAND_IN, CodeEnv

from amelia.v1 import agents_pb2_grpc
from amelia_agents.server import build_service as build_agents
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings

__all__ = ["fake_anthropic", "fake_openai"]  # fixtures from tests/agents_fake_llm.py

QUEUE = "AMELIA_RUNS_WORKFLOWS"
# Runs executed by worker processes (to SIGKILL) go through another queue.
DURABLE_QUEUE = "AMELIA_RUNS_WORKFLOWS_DURABLE"
DURABLE_ACK_WAIT = 2


@pytest.fixture(scope="session")
def code_env(tmp_path_factory: pytest.TempPathFactory) -> CodeEnv:
    root = tmp_path_factory.mktemp("code")
    cli = root / "claude-stand-in"
    cli.write_text(f"#!{sys.executable}\n{STAND_IN}")
    cli.chmod(0o755)
    env = CodeEnv(
        allowed=root / "allowed", outside=root / "outside", worktrees=root / "worktrees", cli=cli
    )
    for path in (env.allowed, env.outside):
        path.mkdir()
    return env


@pytest.fixture(scope="session")
def workflows_settings(
    infra: object,
    events_address: str,
    rag_address: str,
    fake_anthropic: FakeAnthropic,
    code_env: CodeEnv,
) -> Settings:
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        EVENTS_ADDRESS=events_address,
        RAG_ADDRESS=rag_address,
        ANTHROPIC_API_KEY="sk-ant-test-key",
        ANTHROPIC_BASE_URL=fake_anthropic.url,
        AGENT_WORKERS=3,
        RUNS_QUEUE_STREAM=QUEUE,
        RUN_ACK_WAIT_SECONDS=3,
        LLM_RETRY_BACKOFF_SECONDS=0.05,
        CLAUDE_CODE_PATH=str(code_env.cli),
        CLAUDE_CODE_TIMEOUT=CLAUDE_CODE_TIMEOUT,
        GIT_WORKTREE_DIR=code_env.worktrees,
        CODE_ALLOWED_ROOTS=[code_env.allowed],
        CODE_ENV_PASSTHROUGH="AMELIA_TEST_PASSTHROUGH",
    )
    return settings


@pytest.fixture(scope="session")
async def agents(workflows_settings: Settings) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    async with serve_agents(workflows_settings) as stub:
        yield stub


@pytest.fixture
async def durable_api(
    workflows_settings: Settings,
) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    """An agents service with no workers of its own: worker processes run its runs."""
    settings = workflows_settings.model_copy(
        update={
            "AGENT_WORKERS": 0,
            "RUNS_QUEUE_STREAM": DURABLE_QUEUE,
            "RUN_ACK_WAIT_SECONDS": DURABLE_ACK_WAIT,
        }
    )
    service = await build_agents(settings)
    port = await service.start()
    async with aio_channel(f"127.0.0.1:{port}", settings) as channel:
        yield agents_pb2_grpc.AgentServiceStub(channel)
    await service.stop(1.0)


@pytest.fixture
async def start_worker(
    workflows_settings: Settings, tmp_path: Path
) -> AsyncIterator[Callable[..., WorkerProcess]]:
    """Starts `python -m amelia_agents.worker` processes for `durable_api`'s queue, with the
    same model, RAG and Claude Code settings as the in-process workers (keyword arguments
    override environment variables); stops them at the end."""
    s = workflows_settings
    env = {
        "RUNS_QUEUE_STREAM": DURABLE_QUEUE,
        "RUN_ACK_WAIT_SECONDS": str(DURABLE_ACK_WAIT),
        "RAG_ADDRESS": s.RAG_ADDRESS,
        "ANTHROPIC_API_KEY": s.ANTHROPIC_API_KEY.get_secret_value(),
        "ANTHROPIC_BASE_URL": s.ANTHROPIC_BASE_URL,
        "CLAUDE_CODE_PATH": s.CLAUDE_CODE_PATH,
        "CLAUDE_CODE_TIMEOUT": str(s.CLAUDE_CODE_TIMEOUT),
        "GIT_WORKTREE_DIR": str(s.worktree_dir),
        "CODE_ALLOWED_ROOTS": ",".join(str(p) for p in s.CODE_ALLOWED_ROOTS),
    }
    started: list[WorkerProcess] = []

    def start(name: str, **overrides: str) -> WorkerProcess:
        worker = WorkerProcess(s, tmp_path / f"{name}.log", env={**env, **overrides})
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.stop()
