"""Small helpers shared by the agents tests."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from amelia.v1 import agents_pb2, agents_pb2_grpc, events_pb2
from amelia_common.eventlog import event_data

Stub = agents_pb2_grpc.AgentServiceStub
S = agents_pb2


async def wait_status(stub: Stub, name: str, *statuses: int, timeout: float = 30) -> S.Run:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = (await stub.GetRun(S.GetRunRequest(name=name))).run
        if run.status in statuses:
            return run
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} stayed {S.RunStatus.Name(run.status)}: {run}")
        await asyncio.sleep(0.05)


async def collect(
    stub: Stub, name: str, after: int = 0, timeout: float = 60
) -> list[events_pb2.Event]:
    """StreamRun until the server ends the stream."""

    async def read() -> list[events_pb2.Event]:
        out = []
        async for response in stub.StreamRun(S.StreamRunRequest(name=name, after_sequence=after)):
            out.append(response.event)
        return out

    return await asyncio.wait_for(read(), timeout)


def types(events: list[events_pb2.Event]) -> list[str]:
    return [e.type for e in events]


def tokens(events: list[events_pb2.Event]) -> list[str]:
    return [event_data(e)["text"] for e in events if e.type == "run.token"]


def data(events: list[events_pb2.Event], event_type: str) -> list[dict[str, Any]]:
    return [event_data(e) for e in events if e.type == event_type]


async def create_run(stub: Stub, **run: Any) -> S.Run:
    message = S.Run()
    for key, value in run.items():
        if key == "input":
            message.input.update(value)
        elif key == "timeout":
            message.timeout.FromSeconds(value)
        else:
            setattr(message, key, value)
    return (await stub.CreateRun(S.CreateRunRequest(run=message))).run


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")
