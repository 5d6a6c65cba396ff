"""What a client sends is held to what NATS can carry, and NATS's refusals are said as such.

QA (reproduced twice): one StreamEvents call with a type pattern of 4,100 characters (from the
gateway's `?filter.types=`, a WebSocket subscription or gRPC) went into the subject of
JetStream's consumer-create request, past NATS's 4 KiB control line: the server answered
`-ERR 'maximum control line exceeded'`, nats-py closed the events service's connection for good,
and the service stayed up, NOT_SERVING, refusing every publish of the mesh although NATS was
fine. Here: such patterns are INVALID_ARGUMENT naming the limit and the service goes on; a
connection the server closes anyway stops the process (for its supervisor to start it again,
`test_a_connection_the_server_closes_stops_the_service`); JetStream's consumer limit is
RESOURCE_EXHAUSTED, not an outage; a refused batch names the event of the batch at fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from events_helpers import Janitor, RunningEvents, collect, event, publish
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_process import ServiceProcess

from amelia.v1 import events_pb2, events_pb2_grpc
from amelia_common.embedded import EmbeddedNats, free_port, nats_server_binary
from amelia_common.eventlog import MAX_SUBJECT_LENGTH, MAX_TYPE_LENGTH, stream_config
from amelia_common.grpc_client import aio_channel
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

SERVING = health_pb2.HealthCheckResponse.SERVING


async def refused(call: object) -> grpc.aio.AioRpcError:
    """The error `call` (a unary call or the first message of a stream) ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            await collect(call, 1, timeout=20)
        else:
            await call  # type: ignore[misc]
    return info.value


# ------------------------------------------------------------------ patterns past the limits


async def test_a_pattern_longer_than_any_type_is_refused_and_the_service_keeps_serving(
    events: RunningEvents, resource: str
) -> None:
    stub = events.stub
    too_long = [
        "a" * 4100,  # the QA's: a 4 KiB control line
        "a" * 5000,
        "app." + "b" * (MAX_TYPE_LENGTH - 3),  # one character more than a type may have
        "app.*." + "c" * 200,
    ]
    for pattern in too_long:
        flt = events_pb2.EventFilter(types=[pattern], subject=resource)
        for call in (
            stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt)),
            stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt, from_beginning=True)),
            stub.ListEvents(events_pb2.ListEventsRequest(filter=flt)),
        ):
            error = await refused(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            details = error.details() or ""
            assert f"longer than {MAX_TYPE_LENGTH} characters" in details, details
            assert "could never match" in details, details
            assert len(details) < 400, details  # the pattern is not echoed whole
    # A subject past its limit says it too (it was refused before, without the limit).
    flt = events_pb2.EventFilter(subject="runs/" + "x" * MAX_SUBJECT_LENGTH)
    error = await refused(stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"longer than {MAX_SUBJECT_LENGTH} characters" in (error.details() or "")

    # A type past its limit says it too (it said "must be dotted lowercase words").
    error = await refused(publish(stub, "app." + "e" * (MAX_TYPE_LENGTH - 3), resource))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"longer than {MAX_TYPE_LENGTH} characters" in (error.details() or "")

    # The service is still on NATS: it publishes, streams and answers SERVING.
    assert events.log.nc.is_connected
    longest = "app." + "d" * (MAX_TYPE_LENGTH - 4)  # as long as a type may be: accepted
    flt = events_pb2.EventFilter(types=[longest, "app.*"], subject=resource)
    call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt))
    await call.initial_metadata()
    stored = await publish(stub, longest, resource, n=1)
    assert [e.sequence for e in await collect(call, 1)] == [stored.sequence]
    call.cancel()
    health = health_pb2_grpc.HealthStub(events.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="amelia.v1.EventService"))
    assert reply.status == SERVING
    assert events.log.nc.is_connected


# ------------------------------------------------------------------ a batch names its event


async def test_a_refused_batch_names_the_event_at_fault(
    events: RunningEvents, resource: str
) -> None:
    batch = [event("app.fine", resource, i=i) for i in range(5)]
    batch[3].type = "Bad Type"
    error = await refused(events.stub.PublishEvents(events_pb2.PublishEventsRequest(events=batch)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("events[3]: event type 'Bad Type' must be"), (
        error.details()
    )
    batch = [event("app.fine", resource, i=i) for i in range(3)]
    batch[2].type = "run.completed"  # a type only the services publish
    error = await refused(events.stub.PublishEvents(events_pb2.PublishEventsRequest(events=batch)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (error.details() or "").startswith("events[2]: event type 'run.completed'")
    # Nothing of either batch was stored.
    page = await events.stub.ListEvents(
        events_pb2.ListEventsRequest(filter=events_pb2.EventFilter(subject=resource))
    )
    assert list(page.events) == []


# ------------------------------------------------------------------ JetStream's consumer limit


async def test_the_consumer_limit_is_resource_exhausted_not_an_outage(
    settings: Settings, private_nats: EmbeddedNats, janitor: Janitor
) -> None:
    """A stream that may hold 3 consumers: the 4th reader is RESOURCE_EXHAUSTED at once (it
    was UNAVAILABLE "NATS did not answer … try again shortly"), and a freed one is reused."""
    isolated = settings.model_copy(
        update={"NATS_URL": private_nats.url, "EVENTS_PUBLISH_TIMEOUT_SECONDS": 5.0}
    )
    nc = await connect_nats(isolated, "test-max-consumers")
    try:
        config = stream_config(isolated)
        config.max_consumers = 3
        await nc.jetstream().add_stream(config)
    finally:
        await nc.close()
    running = await janitor.start(isolated)
    stub = running.stub
    calls = []
    for i in range(3):  # each on a filter of its own: a consumer each
        flt = events_pb2.EventFilter(subject=f"tests/held-{i}")
        call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt))
        await call.initial_metadata()
        calls.append(call)
    flt = events_pb2.EventFilter(subject="tests/one-too-many")
    started = asyncio.get_running_loop().time()
    for call in (
        stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt)),
        stub.ListEvents(events_pb2.ListEventsRequest(filter=flt)),
    ):
        error = await refused(call)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        details = error.details() or ""
        assert "too many open subscriptions on the event log" in details, details
        assert "maximum consumers limit reached" in details, details
        assert "close some" in details, details
    assert asyncio.get_running_loop().time() - started < 4.0  # answered, not waited out
    # NATS is fine meanwhile: publishing goes on, and a closed subscription frees its consumer.
    await publish(stub, "app.still", "tests/held-0")
    calls[0].cancel()
    call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt))
    for _ in range(50):  # the cancelled call's consumer is deleted as its handler ends
        try:
            await call.initial_metadata()
            stored = await publish(stub, "app.after", "tests/one-too-many")
            assert [e.sequence for e in await collect(call, 1)] == [stored.sequence]
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
            await asyncio.sleep(0.1)
            call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt))
    else:
        raise AssertionError("the freed consumer was never reused")
    for call in calls:
        call.cancel()


# ------------------------------------------------------------------ a connection closed by NATS


@pytest.fixture
def small_control_line_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server (JetStream) whose protocol lines may be at most 400 bytes: one our own
    valid but long consumer-create request exceeds, as 4 KiB was exceeded in the QA's case."""
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(
        f'host: 127.0.0.1\nport: {port}\nmax_control_line: 400\njetstream {{ store_dir: "'
        f'{tmp_path / "js"}" }}\n'
    )
    log = (tmp_path / "nats.log").open("wb")
    server = subprocess.Popen(
        [nats_server_binary(), "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)
        log.close()


@pytest.fixture
async def events_process(
    settings: Settings, small_control_line_nats: str, tmp_path: Path
) -> AsyncIterator[tuple[ServiceProcess, str]]:
    """`python -m amelia_events` on that server, SERVING; its address."""
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": small_control_line_nats,
        "EVENTS_GRPC_PORT": str(port),
        "EVENTS_METRICS_PORT": "0",
        "AMELIA_DATA_DIR": str(tmp_path / "data"),
        "ENVIRONMENT": "testing",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "AMELIA_API_TOKEN": settings.api_token,
    }
    env.pop("DATABASE_URL", None)
    process = ServiceProcess("amelia_events", env, tmp_path / "events.log")
    address = f"127.0.0.1:{port}"
    channel = aio_channel(address, settings)
    health = health_pb2_grpc.HealthStub(channel)

    async def serving() -> bool:
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == SERVING)

    try:
        await process.wait_until(serving, "SERVING", timeout=60)
        yield process, address
    finally:
        await channel.close()
        await process.stop(grace=15)


async def test_a_connection_the_server_closes_stops_the_service(
    settings: Settings, events_process: tuple[ServiceProcess, str]
) -> None:
    """NATS closes the events service's connection (a real `-ERR`, a protocol line past the
    server's limit): the service logs why and stops as SIGTERM stops it (gracefully, exit 0),
    for its supervisor to start it again (`amelia up` starts a service that stopped cleanly
    again at once). Before, it lived on cut off from NATS: NOT_SERVING, refusing every call."""
    process, address = events_process
    channel = aio_channel(address, settings)
    try:
        stub = events_pb2_grpc.EventServiceStub(channel)
        # Valid, and within the event log's limits; past this server's 400-byte line.
        long_subject = "tests/" + uuid.uuid4().hex * 7
        flt = events_pb2.EventFilter(types=["app." + "x" * 120], subject=long_subject)
        call = stub.StreamEvents(events_pb2.StreamEventsRequest(filter=flt))
        with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
            await collect(call, 1, timeout=30)  # ended by the shutdown, whichever way
    finally:
        await channel.close()
    code = await asyncio.to_thread(process.proc.wait, 30)
    log = process.log_text()
    assert code == 0, log[-3000:]
    assert "NATS closed this process's connection for good" in log, log[-3000:]
    assert "maximum control line exceeded" in log, log[-3000:]
    assert "stopped" in log  # the graceful shutdown's last line


async def run_script(script: Path) -> subprocess.CompletedProcess[str]:
    """`script` run by this Python in a process of its own, its output captured."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )


async def test_our_own_close_stops_nothing(settings: Settings, tmp_path: Path) -> None:
    """`close` and `drain` of a client of `connect_nats` are ours: the process goes on (run in a
    process of its own, which a stop would end with SIGTERM)."""
    script = tmp_path / "own_close.py"
    script.write_text(
        "import asyncio\n"
        "from amelia_common.nats_client import connect_nats\n"
        "from amelia_common.settings import Settings\n"
        "async def main():\n"
        f"    settings = Settings(_env_file=None, NATS_URL={settings.NATS_URL!r})\n"
        "    nc = await connect_nats(settings, 'test-own-close')\n"
        "    await nc.close()\n"
        "    nc = await connect_nats(settings, 'test-own-drain')\n"
        "    await nc.drain()\n"
        "    async with await connect_nats(settings, 'test-own-with'):\n"
        "        pass\n"
        "    await asyncio.sleep(1)\n"
        "    print('still here')\n"
        "asyncio.run(main())\n"
    )
    done = await run_script(script)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert "still here" in done.stdout
    assert "closed this process's connection" not in done.stdout + done.stderr


async def test_a_plain_process_closed_by_the_server_ends_by_sigterm(
    small_control_line_nats: str, tmp_path: Path
) -> None:
    """A process without a SIGTERM handler of its own (a script, a worker still starting) is
    ended by the signal's default: loud in its log, and a clean stop for a supervisor."""
    script = tmp_path / "closed_by_server.py"
    script.write_text(
        "import asyncio\n"
        "from amelia_common.nats_client import connect_nats\n"
        "from amelia_common.settings import Settings\n"
        "async def main():\n"
        f"    settings = Settings(_env_file=None, NATS_URL={small_control_line_nats!r})\n"
        "    nc = await connect_nats(settings, 'test-closed-by-server')\n"
        "    await nc.publish('a.' + 'b' * 600, b'')  # a protocol line past 400 bytes\n"
        "    await asyncio.sleep(10)\n"
        "    print('still here')\n"
        "asyncio.run(main())\n"
    )
    done = await run_script(script)
    output = done.stdout + done.stderr
    assert done.returncode == -signal.SIGTERM, (done.returncode, output)
    assert "still here" not in output
    assert "NATS closed this process's connection for good" in output, output
    assert "maximum control line exceeded" in output, output
