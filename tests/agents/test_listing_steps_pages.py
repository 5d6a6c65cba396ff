"""ListRunSteps pages are cut by bytes like the other List pages: a run whose steps hold more
than gRPC's default 4 MiB receive limit is read page by page, every step once, in order."""

from __future__ import annotations

from typing import Any, TypedDict

import grpc
from agents_helpers import S, create_run, wait_status

from amelia.v1 import agents_pb2_grpc
from amelia_agents.server import build_service as build_agents
from amelia_agents.workflows import Workflow, register
from amelia_agents.workflows.registry import linear_graph
from amelia_common.settings import Settings

NODES = [f"n{i}" for i in range(6)]
BIG = 700 * 1024  # characters a node writes: each step's input holds the last node's too
DEFAULT_LIMIT = 4 * 1024 * 1024


class BigState(TypedDict, total=False):
    request: dict[str, Any]
    big: str


def _node(name: str) -> Any:
    async def node(_state: BigState) -> dict[str, Any]:
        return {"big": f"{name}:" + "b" * BIG}

    return node


register(
    Workflow(
        name="test-big-steps",
        description="test workflow: six nodes, each writing ~0.7 MiB",
        nodes=NODES,
        build=lambda _agent: linear_graph(BigState, *((n, _node(n)) for n in NODES)),
        to_state=lambda value: {"request": value},
        to_output=lambda _state: {"nodes": len(NODES)},
        input_schema={"type": "object"},
    ),
    replace=True,
)


async def test_steps_over_the_grpc_limit_come_in_shorter_pages(agents_settings: Settings) -> None:
    service = await build_agents(agents_settings)
    port = await service.start()
    try:
        # grpc's own channel: the default 4 MiB receive limit a stranger's client has.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agents_pb2_grpc.AgentServiceStub(channel)
            run = await create_run(stub, workflow="workflows/test-big-steps", input={})
            await wait_status(stub, run.name, S.RUN_STATUS_COMPLETED, timeout=60)
            listed: list[S.RunStep] = []
            token, pages, total = "", 0, 0
            while True:
                reply = await stub.ListRunSteps(
                    S.ListRunStepsRequest(parent=run.name, page_token=token)
                )
                assert 0 < reply.ByteSize() < DEFAULT_LIMIT
                total += reply.ByteSize()
                listed += reply.steps
                pages += 1
                token = reply.next_page_token
                if not token:
                    break
            assert total > DEFAULT_LIMIT and pages >= 2
            # Each step whole, once, in order: nothing skipped or repeated at a page's edge.
            assert [s.node for s in listed] == NODES
            for step in listed:
                assert step.update.struct_value["big"] == f"{step.node}:" + "b" * BIG
                assert step.state == S.RUN_STEP_STATE_COMPLETED
            # A smaller page_size still wins when it is the shorter cut.
            one = await stub.ListRunSteps(S.ListRunStepsRequest(parent=run.name, page_size=1))
            assert [s.node for s in one.steps] == NODES[:1] and one.next_page_token
    finally:
        await service.stop(1.0)
