"""gRPC stubs for the CLI, pointed at the running mesh, and errors shown the way a person reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from amelia.v1 import agents_pb2_grpc, rag_pb2_grpc
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import get_settings

if TYPE_CHECKING:
    # The asyncio stubs' types exist only in the generated .pyi (at run time a stub made on an
    # aio channel is the plain Stub class, with aio callables).
    from amelia.v1.agents_pb2_grpc import AgentServiceAsyncStub
    from amelia.v1.rag_pb2_grpc import RagServiceAsyncStub

err = Console(stderr=True)
Stub = TypeVar("Stub")


@asynccontextmanager
async def _stub(address: str, make: Callable[[grpc.aio.Channel], Stub]) -> AsyncIterator[Stub]:
    async with aio_channel(address, get_settings()) as channel:
        yield make(channel)


def rag() -> AbstractAsyncContextManager[RagServiceAsyncStub]:
    return _stub(get_settings().RAG_ADDRESS, rag_pb2_grpc.RagServiceStub)


def agents() -> AbstractAsyncContextManager[AgentServiceAsyncStub]:
    return _stub(get_settings().AGENTS_ADDRESS, agents_pb2_grpc.AgentServiceStub)


def fail(exc: grpc.aio.AioRpcError) -> typer.Exit:
    """Print an RPC error as `CODE: message` and return the exit to raise."""
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        err.print(
            f"[red]UNAVAILABLE:[/red] {exc.details()} — is the mesh running? (`amelia status`)"
        )
    else:
        err.print(f"[red]{exc.code().name}:[/red] {exc.details()}")
    return typer.Exit(1)


def resource(collection: str, value: str) -> str:
    """`abc` or `runs/abc` → `runs/abc`."""
    return value if value.startswith(f"{collection}/") else f"{collection}/{value}"


def listing(*columns: str, title: str | None = None) -> Table:
    """A table whose long cells (resource names, paths) fold instead of being cut off."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table
