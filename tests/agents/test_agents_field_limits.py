"""Per-field size limits (INVALID_ARGUMENT naming the field and its limit), and List pages that
a gRPC client with the default 4 MiB receive limit can read whatever the runs hold."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from agents_helpers import S, create_run, rpc_error, wait_status

from amelia.v1 import agents_pb2_grpc
from amelia_agents.server import build_service as build_agents

TEN_MB = 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("field", "limit"), [("display_name", 256), ("description", 512), ("system_prompt", 256_000)]
)
async def test_agent_text_over_its_limit_is_refused_naming_it(
    agents, field: str, limit: int
) -> None:
    agent_id = f"limits-{uuid.uuid4().hex[:8]}"
    for size in (limit + 1, TEN_MB):
        agent = S.Agent(model="offline:echo", **{field: "x" * size})
        error = await rpc_error(
            agents.CreateAgent(S.CreateAgentRequest(agent=agent, agent_id=agent_id))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"agent.{field}" in error.details() and str(limit) in error.details()
    created = await agents.CreateAgent(
        S.CreateAgentRequest(
            agent=S.Agent(model="offline:echo", **{field: "é" * limit}), agent_id=agent_id
        )
    )
    assert len(getattr(created.agent, field)) == limit
    update = S.Agent(name=created.agent.name, **{field: "y" * (limit + 1)})
    error = await rpc_error(
        agents.UpdateAgent(S.UpdateAgentRequest(agent=update, update_mask=[field]))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and f"agent.{field}" in error.details()


async def test_a_run_input_over_1_mib_is_refused_and_nothing_starts(agents) -> None:
    for size in (1024 * 1024, TEN_MB):
        error = await rpc_error(
            create_run(agents, workflow="workflows/echo", input={"message": "x" * size})
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "run.input" in error.details() and "1 MiB" in error.details()
    answer = S.ResumeRunRequest(name=f"runs/{uuid.uuid4()}")
    answer.answer.string_value = "x" * (1024 * 1024)
    error = await rpc_error(agents.ResumeRun(answer))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "answer" in error.details()


async def test_list_pages_stay_readable_by_a_default_grpc_client(agents_settings) -> None:
    """Five runs of ~0.9 MiB input each (4.5 MiB): a page is cut short by bytes and the next
    page token takes the rest; a client with grpc's default 4 MiB limit reads every page."""
    service = await build_agents(agents_settings)
    port = await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agents_pb2_grpc.AgentServiceStub(channel)
            since = time.time() - 1
            pad = "p" * (900 * 1024)
            names = []
            for i in range(5):
                run = await create_run(
                    stub, workflow="workflows/test-raise", input={"pad": pad, "i": i}
                )
                names.append(run.name)
            for name in names:
                await wait_status(stub, name, S.RUN_STATUS_FAILED)
            listed, token, pages = [], "", 0
            while True:
                request = S.ListRunsRequest(
                    workflow="workflows/test-raise", page_size=50, page_token=token
                )
                request.created_after.FromSeconds(int(since))
                reply = await stub.ListRuns(request)
                assert reply.ByteSize() < 4 * 1024 * 1024
                assert all(r.input["pad"] == pad for r in reply.runs)  # whole, not trimmed
                listed += [r.name for r in reply.runs]
                pages += 1
                token = reply.next_page_token
                if not token:
                    break
            assert sorted(listed) == sorted(names) and pages >= 2
            # Agents too: five of ~1 MB system prompts (256,000 three-byte characters).
            prefix = f"big-{uuid.uuid4().hex[:6]}"
            for i in range(5):
                agent = S.Agent(model="offline:echo", system_prompt="€" * 256_000)
                await stub.CreateAgent(S.CreateAgentRequest(agent=agent, agent_id=f"{prefix}-{i}"))
            found, token = [], ""
            while True:
                page = await stub.ListAgents(S.ListAgentsRequest(page_size=1000, page_token=token))
                assert page.ByteSize() < 4 * 1024 * 1024
                found += [a.name for a in page.agents if a.name.startswith(f"agents/{prefix}")]
                token = page.next_page_token
                if not token:
                    break
            assert sorted(found) == [f"agents/{prefix}-{i}" for i in range(5)]
            # Threads: metadata over 64 KiB is refused; sixty of ~60 KiB (3.6 MB) are paged.
            big = S.Thread()
            big.metadata.update({"note": "m" * (64 * 1024)})
            error = await rpc_error(stub.CreateThread(S.CreateThreadRequest(thread=big)))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "thread.metadata" in error.details() and "64 KiB" in error.details()
            mine = set()
            for i in range(60):
                thread = S.Thread()
                thread.metadata.update({"note": "m" * (60 * 1024), "i": i})
                created = await stub.CreateThread(S.CreateThreadRequest(thread=thread))
                mine.add(created.thread.name)
            seen, token, pages = set(), "", 0
            while True:
                listing = await stub.ListThreads(
                    S.ListThreadsRequest(page_size=1000, page_token=token)
                )
                assert listing.ByteSize() < 4 * 1024 * 1024
                seen |= {t.name for t in listing.threads}
                pages += 1
                token = listing.next_page_token
                if not token:
                    break
            assert mine <= seen and pages >= 2
    finally:
        await service.stop(1.0)
