"""`amelia events` as a person runs it: a real process reading the log through a real gateway,
which is killed and started again while `--follow` runs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

from tui_helpers import DEADLINE, TOKEN, TuiMesh, wait_until

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.grpc_client import aio_channel

AMELIA = str(Path(sys.executable).parent / "amelia")


class Lines:
    """A stream of a child process read line by line in the background."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self.task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.lines.append(line.decode().rstrip("\n"))

    def has(self, words: str) -> bool:
        return any(words in line for line in self.lines)


async def amelia_events(
    mesh: TuiMesh, *args: str, token: str = TOKEN
) -> asyncio.subprocess.Process:
    env = os.environ | {
        "AMELIA_GATEWAY_URL": mesh.url,
        "AMELIA_API_TOKEN": token,
        "COLUMNS": "120",
    }
    return await asyncio.create_subprocess_exec(
        AMELIA,
        "events",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def publish_via_gateway(mesh: TuiMesh, kind: str, n: int) -> None:
    event = {"type": kind, "source": "tests.tui", "subject": "tests/cli", "data": {"n": n}}
    await mesh.post("/v1/events", {"event": event})


async def publish_via_grpc(mesh: TuiMesh, kind: str, n: int) -> None:
    """Past the gateway (it is down), straight to the events service."""
    event = events_pb2.Event(type=kind, source="tests.tui", subject="tests/cli")
    event.data.update({"n": n})
    async with aio_channel(mesh.settings.EVENTS_ADDRESS, mesh.settings) as channel:
        await events_pb2_grpc.EventServiceStub(channel).PublishEvent(
            events_pb2.PublishEventRequest(event=event)
        )


def numbers(lines: list[str]) -> list[int]:
    return [int(json.loads(line)["data"]["n"]) for line in lines]


async def test_follow_prints_each_event_once_in_order_across_a_gateway_restart(
    tui_mesh: TuiMesh,
) -> None:
    kind = f"test.follow{uuid.uuid4().hex[:8]}"
    process = await amelia_events(tui_mesh, "--follow", "--type", kind, "--json")
    out, err = Lines(process.stdout), Lines(process.stderr)  # type: ignore[arg-type]
    try:
        await wait_until(lambda: err.has("following the event log"), "subscribed")
        for n in range(0, 5):
            await publish_via_gateway(tui_mesh, kind, n)
        await wait_until(lambda: len(out.lines) >= 3, "the first events are printed")

        await tui_mesh.gateway.kill(signal.SIGKILL)
        await wait_until(lambda: err.has("lost the gateway"), "the loss is said")
        for n in range(5, 10):  # published while no gateway runs
            await publish_via_grpc(tui_mesh, kind, n)
        await tui_mesh.gateway.start()
        await wait_until(lambda: err.has("resumed after #"), "resumed")
        for n in range(10, 15):
            await publish_via_gateway(tui_mesh, kind, n)
        # The last one came after everything else: once it is printed, any repeat would be too.
        await wait_until(lambda: 14 in numbers(out.lines), "every event is printed")
        assert numbers(out.lines) == list(range(15))
        sequences = [int(json.loads(line)["sequence"]) for line in out.lines]
        assert sequences == sorted(sequences) and len(set(sequences)) == 15
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), DEADLINE)
    await asyncio.gather(out.task, err.task)
    assert code == 0, err.lines  # Ctrl-C ends it quietly

    # Without --follow: what is stored, as lines a person reads, then it exits.
    history = await amelia_events(tui_mesh, "--type", kind, "--since", "beginning")
    stdout, _ = await asyncio.wait_for(history.communicate(), DEADLINE)
    lines = stdout.decode().splitlines()
    assert history.returncode == 0
    assert len(lines) == 15 and all(kind in line for line in lines)
    assert [line.split()[1] for line in lines] == [str(s) for s in sequences]
    assert '{"n": 14}' in lines[-1]
    after = await amelia_events(tui_mesh, "--type", kind, "--since", str(sequences[9]), "--json")
    stdout, _ = await asyncio.wait_for(after.communicate(), DEADLINE)
    assert numbers(stdout.decode().splitlines()) == list(range(10, 15))


async def test_a_refused_filter_or_token_is_said_and_ends_with_status_1(tui_mesh: TuiMesh) -> None:
    async def run(*args: str, token: str = TOKEN) -> tuple[int, str]:
        process = await amelia_events(tui_mesh, *args, token=token)
        _, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
        return process.returncode or 0, " ".join(stderr.decode().split())

    code, said = await run("--follow", "--type", "run.**")
    assert code == 1 and "run.**" in said, said
    code, said = await run("--type", "run.**")
    assert code == 1 and "INVALID_ARGUMENT" in said and "run.**" in said, said
    code, said = await run("--follow", token="not-the-token")
    assert code == 1 and "AMELIA_API_TOKEN" in said, said
    code, said = await run("--since", "yesterday-ish")
    assert code == 2 and "yesterday-ish" in said, said
