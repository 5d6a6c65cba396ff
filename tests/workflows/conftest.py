"""Built-in workflow tests: the real events, rag and agents services in process (port 0) on the
session's PostgreSQL and NATS, fake Anthropic/OpenAI servers speaking their streaming wire
formats, and a stand-in for the Claude Code CLI.

The agents service here has its own queue stream, so the agents suite's workers (alive for the
whole session) never take these runs.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from agents_fake_llm import FakeAnthropic, fake_anthropic, fake_openai
from local_model import local_model
from workflows_support import CLAUDE_CODE_TIMEOUT, STAND_IN, CodeEnv

from amelia.v1 import agents_pb2_grpc, rag_pb2_grpc
from amelia_agents.server import build_service as build_agents
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings
from amelia_events.server import build_service as build_events
from amelia_rag.embeddings import LocalEmbedder
from amelia_rag.server import build_service as build_rag

__all__ = ["fake_anthropic", "fake_openai"]  # fixtures from tests/agents_fake_llm.py

QUEUE = "AMELIA_RUNS_WORKFLOWS"


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
async def events_address(infra: object) -> AsyncIterator[str]:
    service = await build_events(infra.settings())  # type: ignore[attr-defined]
    port = await service.start()
    yield f"127.0.0.1:{port}"
    await service.stop(0.5)


@pytest.fixture(scope="session")
async def rag_address(infra: object) -> AsyncIterator[str]:
    """The real RAG service with the real local model (shared with tests/rag)."""
    settings: Settings = infra.settings()  # type: ignore[attr-defined]
    embedder = LocalEmbedder.from_model(local_model(), settings)
    service = await build_rag(settings, embedder=embedder)
    port = await service.start()
    yield f"127.0.0.1:{port}"
    await service.stop(1.0)
    await embedder.aclose()


@pytest.fixture(scope="session")
async def rag(rag_address: str) -> AsyncIterator[rag_pb2_grpc.RagServiceStub]:
    channel = grpc.aio.insecure_channel(rag_address)
    yield rag_pb2_grpc.RagServiceStub(channel)
    await channel.close()


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
    )
    return settings


@pytest.fixture(scope="session")
async def agents(workflows_settings: Settings) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    service = await build_agents(workflows_settings)
    port = await service.start()
    channel = aio_channel(f"127.0.0.1:{port}", workflows_settings)
    yield agents_pb2_grpc.AgentServiceStub(channel)
    await channel.close()
    await service.stop(1.0)
