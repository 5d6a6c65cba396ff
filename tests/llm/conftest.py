"""Real-model tests: the local llama.cpp server with the model `make install` fetched, started
once per session, and the real events, rag and agents services in process on the session's
PostgreSQL and NATS.

The events and rag services are the session's (tests/conftest.py); the agents service has the
folder's own run queue (Infra.settings), so other suites' workers never take these runs.
The model is small (0.5B) and runs on one thread: keep these tests few, with greedy sampling
(temperature 0), small max_tokens and tolerant assertions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from agents_helpers import serve_agents

from amelia.v1 import agents_pb2_grpc
from amelia_common import local_model
from amelia_common.embedded import free_port
from amelia_common.llama_server import EmbeddedLlama
from amelia_common.settings import DEFAULT_LOCAL_MODEL, Settings

MODEL = f"local:{DEFAULT_LOCAL_MODEL}"


@pytest.fixture(scope="session")
def llama(infra: object) -> Iterator[EmbeddedLlama]:
    """The local model server, as `amelia up` runs it (1 thread, 2 slots), on a free port."""
    settings: Settings = infra.settings()  # type: ignore[attr-defined]
    if not local_model.model_path(settings).is_file():
        pytest.fail(
            f"the local model is not at {local_model.model_path(settings)}: run 'make install' "
            "(it fetches and verifies it)"
        )
    server = EmbeddedLlama.from_settings(settings, port=free_port(), watch_parent=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llm_settings(
    infra: object, llama: EmbeddedLlama, events_address: str, rag_address: str
) -> Settings:
    """No provider key: DEFAULT_MODEL resolves to the local model, as on a fresh machine."""
    settings: Settings = infra.settings(  # type: ignore[attr-defined]
        EVENTS_ADDRESS=events_address,
        RAG_ADDRESS=rag_address,
        LOCAL_MODEL_URL=llama.base_url,
        AGENT_WORKERS=2,
        RUN_ACK_WAIT_SECONDS=30,
        LLM_RETRY_BACKOFF_SECONDS=0.2,
        ANTHROPIC_API_KEY="",
        OPENAI_API_KEY="",
        DEFAULT_MODEL="",
    )
    assert settings.DEFAULT_MODEL == MODEL
    return settings


@pytest.fixture(scope="session")
async def llm_agents(llm_settings: Settings) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    async with serve_agents(llm_settings) as stub:
        yield stub
