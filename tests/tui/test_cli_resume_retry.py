"""An answer typed into `amelia run` while the agents service cannot be reached is sent again
until it is taken (ResumeRun carries a request_id, so a second send is safe): the run leaves its
question and finishes, instead of staying paused with the CLI waiting on nothing."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from google.protobuf import struct_pb2
from test_cli_output import cli_env, eventually
from test_cli_stranger import paused_plan
from tui_helpers import TuiMesh

from amelia.v1 import agents_pb2, agents_pb2_grpc
from amelia_cli.commands.agents import resume_request, resume_until_taken
from amelia_common.grpc_client import aio_channel
from amelia_common.ports import free_port


class FlakyLink:
    """A TCP relay to the agents service that hangs up on the first connection (a network
    blip or a restarting service, as the client sees it) and relays every later one."""

    def __init__(self, target: str) -> None:
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.refused = 0
        self.server: asyncio.Server | None = None
        self.port = free_port()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refused == 0:
            self.refused += 1
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


async def test_an_answer_lost_to_an_unreachable_service_is_sent_again(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    run_name = await paused_plan(env)

    link = FlakyLink(env["AGENTS_ADDRESS"].split(",")[0])
    await link.start()
    try:
        token = env["AMELIA_API_TOKEN"]
        async with aio_channel(f"127.0.0.1:{link.port}", tui_mesh.settings, token) as channel:
            stub = agents_pb2_grpc.AgentServiceStub(channel)
            answer = struct_pb2.Value(string_value="approve")
            await resume_until_taken(stub, resume_request(run_name, answer))
            assert link.refused == 1  # the first send was lost, the second taken

            last: list[agents_pb2.Run] = []

            async def finished() -> bool:
                reply = await stub.GetRun(agents_pb2.GetRunRequest(name=run_name))
                last[:] = [reply.run]
                return bool(reply.run.status == agents_pb2.RUN_STATUS_COMPLETED)

            await eventually(finished, lambda: last)
    finally:
        await link.stop()
