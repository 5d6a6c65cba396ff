"""A run's usage counts every model call — also those of an attempt interrupted in the middle of
a node (its worker SIGKILLed, or stopped by SIGTERM), a node the next attempt runs again — and
says how much of it that was (`TokenUsage.interrupted_*`), so a client showing the run's total
next to its steps can say why the total is bigger (QA s26 H2: 675 in / 517 out against steps of
300 / 300, nothing saying why). Real worker processes, a fake OpenAI-compatible server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agents_fake_llm import FakeOpenAI
from agents_helpers import S, collect, data
from interrupted_usage import CALL_IN, OUT, Files, api_settings, interrupted_run

from amelia.v1 import agents_pb2_grpc
from amelia_agents.server import build_service
from amelia_common.grpc_client import aio_channel


@pytest.fixture
async def api(
    infra: object, events_address: str
) -> AsyncIterator[agents_pb2_grpc.AgentServiceStub]:
    settings = api_settings(infra, events_address)
    service = await build_service(settings)
    port = await service.start()
    channel = aio_channel(f"127.0.0.1:{port}", settings)
    yield agents_pb2_grpc.AgentServiceStub(channel)
    await channel.close()
    await service.stop(1.0)


@pytest.fixture
def files(infra: object, tmp_path: Path) -> Files:
    return Files(infra.settings(), tmp_path)  # type: ignore[attr-defined]


async def _check_usage_explained(
    api: agents_pb2_grpc.AgentServiceStub, name: str, late: bool = False
) -> None:
    """b ran twice: the run's usage counts the four calls, says b's first call was an
    interrupted attempt's, and the rest is exactly what the steps' `run.node.finished` carry."""
    total = (4 * CALL_IN, sum(OUT.values()) + OUT["b"])
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # (a frozen worker's write comes when it resumes)
        run = (await api.GetRun(S.GetRunRequest(name=name))).run
        if (run.usage.input_tokens, run.usage.output_tokens) == total:
            break
        assert asyncio.get_running_loop().time() < deadline, f"usage: {run.usage}"
        await asyncio.sleep(0.1)
    events = await collect(api, name)
    finished = {d["node"]: d for d in data(events, "run.node.finished")}
    assert {n: (finished[n]["input_tokens"], finished[n]["output_tokens"]) for n in "abc"} == {
        n: (CALL_IN, out) for n, out in OUT.items()
    }
    usage = run.usage
    # Every call counted (b's twice, `total`), as before; of them b's first call, which no
    # step counts.
    assert (usage.interrupted_input_tokens, usage.interrupted_output_tokens) == (CALL_IN, OUT["b"])
    if late:
        # The frozen worker's held usage may have come after the run's end (its end event
        # could not say it): GetRun's, above, is what counts.
        return
    # The run's end says the same.
    assert data(events, "run.completed")[0]["usage"] == {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "interrupted_input_tokens": CALL_IN,
        "interrupted_output_tokens": OUT["b"],
    }


@pytest.mark.parametrize("how", ["sigkill", "sigterm", "sigstop"])
async def test_an_interrupted_attempts_unfinished_node_is_counted_as_interrupted(
    api: agents_pb2_grpc.AgentServiceStub, files: Files, fake_openai: FakeOpenAI, how: str
) -> None:
    """SIGKILL once b's call is stored; SIGTERM (the worker stores it on its way out); SIGSTOP
    at once (taken over; b's call stored before the freeze or written late, fenced, when the
    frozen worker resumes)."""
    name = await interrupted_run(api, files, f"openai:transcript@{fake_openai.url}/v1", how)
    await _check_usage_explained(api, name, late=how == "sigstop")
