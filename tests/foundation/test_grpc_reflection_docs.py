"""Server reflection serves the protos' comments (QA s27 outside round, L3).

`grpcurl describe amelia.v1.AgentService.CreateRun` prints what reflection serves; the comments
of protos/amelia/v1 are the API's documentation at the terminal. These tests ask the real agents
service's reflection, as grpcurl does, without the API token it is started with.
"""

from __future__ import annotations

import asyncio
import importlib
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from amelia_agents.server import build_service as build_agents
from amelia_common.grpc_server import GrpcService
from amelia_common.reflection import documented_files
from amelia_common.settings import Settings

PROTOS = Path(__file__).resolve().parents[2] / "protos"


def comment_above(proto: str, declaration: str) -> str:
    """The `//` lines right above the line starting with `declaration`, as one spaced line."""
    lines = (PROTOS / proto).read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(declaration))
    comment: list[str] = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip().removeprefix("//"))
    assert comment, f"no comment above {declaration!r} in {proto}"
    return " ".join(" ".join(comment).split())


def leading_comment(file: descriptor_pb2.FileDescriptorProto, path: tuple[int, ...]) -> str:
    for location in file.source_code_info.location:
        if tuple(location.path) == path:
            return " ".join(location.leading_comments.split())
    return ""


def method_path(file: descriptor_pb2.FileDescriptorProto, service: str, method: str) -> tuple:
    s = next(i for i, x in enumerate(file.service) if x.name == service)
    m = next(i for i, x in enumerate(file.service[s].method) if x.name == method)
    return (6, s, 2, m)  # FileDescriptorProto.service, ServiceDescriptorProto.method


def field_path(file: descriptor_pb2.FileDescriptorProto, message: str, field: str) -> tuple:
    t = next(i for i, x in enumerate(file.message_type) if x.name == message)
    f = next(i for i, x in enumerate(file.message_type[t].field) if x.name == field)
    return (4, t, 2, f)  # FileDescriptorProto.message_type, DescriptorProto.field


@pytest.fixture
async def agents_address(settings: Settings) -> AsyncIterator[str]:
    """The agents service (AgentService, GitService, CronService), with an API token."""
    secured = settings.model_copy(
        update={
            "AMELIA_API_TOKEN": settings.AMELIA_API_TOKEN.__class__("reflection-test-token"),
            "AGENT_WORKERS": 0,
        }
    )
    service: GrpcService = await build_agents(secured)
    port = await service.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await service.stop(0)


async def reflect(
    address: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def sent() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            for request in requests:
                yield request

        return [reply async for reply in stub.ServerReflectionInfo(sent(), timeout=60)]


def files_of(
    reply: reflection_pb2.ServerReflectionResponse,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
    parsed = (
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    )
    return {file.name: file for file in parsed}


async def test_describe_a_method_a_field_and_a_service_shows_their_proto_comments(
    agents_address: str,
) -> None:
    replies = await reflect(
        agents_address,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="amelia.v1.CronService"),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="amelia.v1.AgentService.CreateRun"
        ),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="amelia.v1.Run.multitask_strategy"
        ),
    )
    crons = files_of(replies[0])["amelia/v1/crons.proto"]
    assert leading_comment(crons, (6, 0)) == comment_above(
        "amelia/v1/crons.proto", "service CronService"
    )
    # A file comes with what it imports, comments included (events.proto's first message).
    events = files_of(replies[0])["amelia/v1/events.proto"]
    assert leading_comment(events, (4, 0)) == comment_above("amelia/v1/events.proto", "message ")

    agents = files_of(replies[1])["amelia/v1/agents.proto"]
    assert leading_comment(agents, method_path(agents, "AgentService", "CreateRun")) == (
        comment_above("amelia/v1/agents.proto", "rpc CreateRun(")
    )
    agents = files_of(replies[2])["amelia/v1/agents.proto"]
    assert leading_comment(agents, field_path(agents, "Run", "multitask_strategy")) == (
        comment_above("amelia/v1/agents.proto", "string multitask_strategy = ")
    )


async def test_grpcurl_describe_prints_the_comments(agents_address: str) -> None:
    """What the README shows: the real grpcurl (the dev dependency the e2e tests use too)."""
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"
    described: dict[str, str] = {}
    for symbol in ("amelia.v1.AgentService.CreateRun", "amelia.v1.Run.multitask_strategy"):
        process = await asyncio.create_subprocess_exec(
            grpcurl,
            "-plaintext",
            agents_address,
            "describe",
            symbol,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        comment = " ".join(
            line.strip().removeprefix("//")
            for line in out.decode().splitlines()
            if line.strip().startswith("//")
        )
        described[symbol] = " ".join(comment.split())
    assert described == {
        "amelia.v1.AgentService.CreateRun": comment_above(
            "amelia/v1/agents.proto", "rpc CreateRun("
        ),
        "amelia.v1.Run.multitask_strategy": comment_above(
            "amelia/v1/agents.proto", "string multitask_strategy = "
        ),
    }


async def test_every_symbol_grpcurl_asks_for_is_found_and_an_unknown_one_is_not_found(
    agents_address: str,
) -> None:
    symbols = [
        "amelia.v1.AgentService.WaitRun",  # QA L3: "Symbol not found"
        "amelia.v1.RunStatus.RUN_STATUS_COMPLETED",  # grpcurl's name of an enum value
        "amelia.v1.RUN_STATUS_COMPLETED",  # protobuf's
        "grpc.health.v1.Health.Check",
        # Error statuses carry google.rpc details; grpcurl prints them by resolving their type.
        "google.rpc.RequestInfo",
    ]
    replies = await reflect(
        agents_address,
        *(reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in symbols),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="amelia.v1.Nope"),
        reflection_pb2.ServerReflectionRequest(file_by_filename="amelia/v1/rag.proto"),
    )
    for symbol, reply in zip(symbols, replies, strict=False):
        assert files_of(reply), symbol
    assert replies[-2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    rag = files_of(replies[-1])["amelia/v1/rag.proto"]
    assert rag.source_code_info.location


def test_the_described_protos_are_those_the_code_was_generated_from() -> None:
    """descriptors.binpb (what reflection serves) and the *_pb2 modules (what the servers run)
    come from the same `make protos`: equal but for the comments and JSON names protoc adds."""
    for file in documented_files():
        module = importlib.import_module(
            file.name.removesuffix(".proto").replace("/", ".") + "_pb2"
        )
        generated = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        described = descriptor_pb2.FileDescriptorProto()
        described.CopyFrom(file)
        described.ClearField("source_code_info")
        stack = list(described.message_type)
        while stack:
            message = stack.pop()
            for field in (*message.field, *message.extension):
                field.ClearField("json_name")
            stack.extend(message.nested_type)
        assert described == generated, f"{file.name}: run `make protos`"
