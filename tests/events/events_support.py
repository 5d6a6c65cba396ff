"""Helpers for the events tests: the service in process with a real gRPC channel to it."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from amelia.v1 import events_pb2_grpc
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings
from amelia_events.server import EventsService, build_service


@dataclass
class RunningEvents:
    svc: EventsService
    channel: grpc.aio.Channel
    stub: events_pb2_grpc.EventServiceStub
    address: str


async def start_events(settings: Settings) -> RunningEvents:
    svc = await build_service(settings)
    port = await svc.start()
    address = f"127.0.0.1:{port}"
    channel = aio_channel(address, settings)
    return RunningEvents(svc, channel, events_pb2_grpc.EventServiceStub(channel), address)


async def stop_events(running: RunningEvents) -> None:
    await running.channel.close()
    await running.svc.stop(grace=1.0)
