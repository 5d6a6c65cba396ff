"""Local model bench: tokens/s through the mesh next to the raw llama.cpp server, same prompts.

Starts its own embedded PostgreSQL, nats-server and local model server (the model `make install`
fetched, 1 thread, 2 slots, as `amelia up` runs it) and the events and agents services in this
process. For each prompt, in turns so both see the same machine load:

- raw: the OpenAI SDK streaming `/v1/chat/completions` from the server directly;
- mesh: CreateRun (`chat`, `local:` model) → `run.token` events on StreamRun → `run.completed`.

Both use greedy sampling and the same kind of prompt, each request its own (so neither finds
the other's prompt in the server's cache). Generation
rate is output tokens over the time from the first token to the last; time to first token
counts from the request (raw) or from CreateRun (mesh: queue, worker pick-up, checkpoint, then
the same prompt reading). Every request has a deadline: a stuck run is reported as a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from amelia.v1 import agents_pb2, agents_pb2_grpc
from amelia_agents.server import build_service as build_agents
from amelia_common import local_model
from amelia_common.embedded import free_port
from amelia_common.grpc_client import aio_channel
from amelia_common.llama_server import EmbeddedLlama
from amelia_common.settings import DEFAULT_LOCAL_MODEL
from bench.agents import events_mesh

# Every request its own prompt (one new word): none finds its whole prompt in the server's cache.
PROMPTS = [
    f"Write a short story about a lighthouse keeper named {name}."
    for name in ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Niklaus")
]
MAX_TOKENS = 96
DEADLINE_SECONDS = 300.0
MODEL = f"local:{DEFAULT_LOCAL_MODEL}"


@dataclass
class Sample:
    first_token: float  # seconds from the request to the first token
    tokens: int  # output tokens (the server's count)
    generation: float  # seconds from the first token to the last

    @property
    def rate(self) -> float:
        return self.tokens / self.generation if self.generation > 0 else float("nan")


async def raw(client: openai.AsyncOpenAI, prompt: str) -> Sample:
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    stream = await client.chat.completions.create(
        model=DEFAULT_LOCAL_MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                last = time.perf_counter()
                first = first or last
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    return Sample(first - started, tokens, last - first)


async def mesh_sample(stub: agents_pb2_grpc.AgentServiceStub, prompt: str) -> Sample:
    request = agents_pb2.CreateRunRequest(run=agents_pb2.Run(workflow="workflows/chat"))
    request.run.input.update(
        {"message": prompt, "model": MODEL, "temperature": 0, "max_tokens": MAX_TOKENS}
    )
    started = time.perf_counter()
    run = (await stub.CreateRun(request)).run
    first = last = 0.0
    async for response in stub.StreamRun(agents_pb2.StreamRunRequest(name=run.name)):
        kind = response.event.type
        if kind == "run.token":
            last = time.perf_counter()
            first = first or last
        elif kind in ("run.completed", "run.failed", "run.cancelled"):
            if kind != "run.completed":
                raise RuntimeError(f"{run.name} ended with {kind}: {response.event}")
            break
    done = (await stub.GetRun(agents_pb2.GetRunRequest(name=run.name))).run
    return Sample(first - started, done.usage.output_tokens, last - first)


def rss_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summary(label: str, samples: list[Sample]) -> tuple[str, float, float, float]:
    rates = [s.rate for s in samples]
    return (
        label,
        statistics.median(rates),
        statistics.median(s.first_token for s in samples) * 1000,
        statistics.mean(s.tokens for s in samples),
    )


@dataclass
class LocalMesh:
    """What a bench drives: the local model server (for its raw API) and the agents service."""

    llama: EmbeddedLlama
    load_seconds: float  # the model server's start, until it answers
    stub: agents_pb2_grpc.AgentServiceStub


@contextlib.asynccontextmanager
async def local_mesh(root: Path, name: str, **overrides: Any) -> AsyncIterator[LocalMesh]:
    """`events_mesh` with the local model server (the model `make install` fetched, as `amelia
    up` runs it) and the agents service in this process, for the bench `name`; all stopped on
    the way out, whatever failed on the way in."""
    async with events_mesh(root, name, LOCAL_MODEL_PORT=free_port(), **overrides) as settings:
        if not local_model.model_path(settings).is_file():
            raise RuntimeError("the local model is missing: run 'make install'")
        llama = EmbeddedLlama.from_settings(settings, watch_parent=True)
        try:
            started = time.perf_counter()
            settings = settings.model_copy(update={"LOCAL_MODEL_URL": llama.start()})
            load_seconds = time.perf_counter() - started
            agents = await build_agents(settings)
            try:
                channel = aio_channel(f"127.0.0.1:{await agents.start()}", settings)
                try:
                    yield LocalMesh(llama, load_seconds, agents_pb2_grpc.AgentServiceStub(channel))
                finally:
                    await channel.close()
            finally:
                await agents.stop(1.0)
        finally:
            llama.stop()


async def bench(root: Path) -> None:
    async with local_mesh(root, "local-model") as mesh:
        llama = mesh.llama
        client = openai.AsyncOpenAI(base_url=llama.base_url, api_key="not-needed", max_retries=0)
        try:
            # Warm-up: the first request of each path pays one-time costs.
            await asyncio.wait_for(raw(client, "Say hello."), DEADLINE_SECONDS)
            await asyncio.wait_for(mesh_sample(mesh.stub, "Say hello."), DEADLINE_SECONDS)
            raws, meshes = [], []
            for raw_prompt, mesh_prompt in zip(PROMPTS[::2], PROMPTS[1::2], strict=True):
                raws.append(await asyncio.wait_for(raw(client, raw_prompt), DEADLINE_SECONDS))
                meshes.append(
                    await asyncio.wait_for(mesh_sample(mesh.stub, mesh_prompt), DEADLINE_SECONDS)
                )
            rss = rss_mib(llama.pid())
            print(
                f"{llama.model.name}: loaded in {mesh.load_seconds:.1f}s, RSS {rss:.0f} MiB, "
                f"{llama.threads} thread(s), {llama.slots} slots; {len(raws)} prompts each, "
                f"greedy, max_tokens {MAX_TOKENS}, {os.cpu_count()} cores"
            )
            header = f"{'path':>5} | {'tokens/s':>8} | {'first token ms':>14} | {'tokens':>6}"
            print(header)
            print("-" * len(header))
            rows = [summary("raw", raws), summary("mesh", meshes)]
            for label, rate, first, tokens in rows:
                print(f"{label:>5} | {rate:>8.1f} | {first:>14.0f} | {tokens:>6.0f}")
            ratio = rows[1][1] / rows[0][1]
            verdict = "meets" if ratio >= 0.9 else "MISSES"
            print(f"\nmesh/raw generation rate: {ratio:.2f}x ({verdict} the 0.9x target, medians)")
        finally:
            await client.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="amelia-bench-llm-", dir="/tmp") as tmp:
        asyncio.run(bench(Path(tmp)))


if __name__ == "__main__":
    main()
