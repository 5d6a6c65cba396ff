"""Runs accepted while the NATS node leading the run queue is SIGKILLed: two agents replicas
(API and worker loops each, with their own NATS connections, engines and checkpointers) on a
3-node cluster with the queue kept on every node (R3). Every run a client was told was accepted
finishes, and its end is in the event log exactly once.

The replicas run in this process: the agents service takes tens of seconds to import on a busy
2-core machine, and what is under test is NATS losing a node, not the replicas' processes (the
gateway, events and rag tests kill those)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from agents_helpers import running_agents
from faults_support import burst, last_sequence, terminal_events, wait_all_finished
from scale_support import all_replicas_current, stream_leader

from amelia.v1 import agents_pb2_grpc
from amelia_common.grpc_client import aio_channel
from amelia_common.nats_cluster import NatsCluster
from amelia_common.settings import Settings

WAVES = 3
RUNS_PER_WAVE = 10


@asynccontextmanager
async def agents_replicas(settings: Settings, count: int) -> AsyncIterator[str]:
    """`count` agents services on their own ports; yields the comma list of their addresses."""
    async with AsyncExitStack() as stack:
        ports = []
        for _ in range(count):
            running = await stack.enter_async_context(running_agents(settings))
            ports.append(running.service.bound_port)
        yield ",".join(f"127.0.0.1:{port}" for port in ports)


@pytest.mark.slow
async def test_runs_accepted_while_the_queue_leader_dies_all_finish_once(
    cluster_settings: Settings, nats_cluster: NatsCluster
) -> None:
    settings = cluster_settings.model_copy(
        update={
            # A queue of this suite's own: the reconciler only re-queues runs of its queue.
            "RUNS_QUEUE_STREAM": "AMELIA_RUNS_SCALE",
            "AGENT_WORKERS": 2,
            "RUN_ACK_WAIT_SECONDS": 3,
            "RUN_SWEEP_INTERVAL_SECONDS": 0.5,
            "RUN_REQUEUE_AFTER_SECONDS": 2,
            "RUN_RETRY_BACKOFF_SECONDS": 0.2,
        }
    )
    async with agents_replicas(settings, 2) as address:
        after = await last_sequence(settings)
        # The queue is on all 3 nodes (RUNS_QUEUE_REPLICAS), its copies up to date.
        await all_replicas_current(settings, settings.RUNS_QUEUE_STREAM)
        leader = nats_cluster.node(await stream_leader(settings, settings.RUNS_QUEUE_STREAM))
        try:
            async with aio_channel(address, settings) as channel:
                stub = agents_pb2_grpc.AgentServiceStub(channel)
                names = await burst(stub, RUNS_PER_WAVE, retry=True)
                # The next waves are on their way (and the first one running) when it dies.
                waves = asyncio.gather(
                    *(burst(stub, RUNS_PER_WAVE, retry=True) for _ in range(WAVES - 1))
                )
                await asyncio.sleep(0)
                await asyncio.to_thread(leader.kill)
                names += [name for wave in await waves for name in wave]
                assert len(set(names)) == WAVES * RUNS_PER_WAVE

                outcome = await wait_all_finished(stub, names)
                assert outcome.statuses() == {"RUN_STATUS_COMPLETED": len(names)}
                ends = await terminal_events(settings, after)
                assert {name: ends[name] for name in names} == dict.fromkeys(names, 1)
                assert await stream_leader(settings, settings.RUNS_QUEUE_STREAM) != leader.name
        finally:
            await asyncio.to_thread(leader.start)
            await all_replicas_current(settings, settings.RUNS_QUEUE_STREAM)
            await all_replicas_current(settings, settings.EVENTS_STREAM)
