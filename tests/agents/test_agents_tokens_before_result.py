"""A node's result is recorded only once the tokens it streamed are in the log.

QA s22: NATS frozen (SIGSTOP) while a node streamed. nats-py took the tokens into its buffer
without a word, the node ran to its end and its writes reached PostgreSQL; then the pick-up
failed waiting for the acknowledgements. The next pick-up found the node's writes, did not run
it again, and the run COMPLETED with the end of its text in no event: `amelia run` printed 31
words of 60 and "completed". Now a node's writes wait until its events are stored, so the
node runs again, streams again, and a client following the documented rule (on `run.resumed`,
drop what the interrupted node streamed) shows the whole answer.

The instant is arranged: NATS is frozen once the log holds the node's first tokens, and stays
frozen past the node's end and the pick-up's wait for it (it reproduced QA's run: attempt 2
started the node and streamed nothing)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from agents_helpers import S, create_run, data, serve_agents, wait_status
from test_agents_durability import run_events
from test_agents_queue_faults import FINISHED, fault_settings

from amelia_common.embedded import EmbeddedNats, free_port
from amelia_common.eventlog import event_data
from amelia_common.settings import Settings

QUEUE = "AMELIA_RUNS_TOKENS_FIRST"
WORDS = [f"w{i:02d}" for i in range(1, 41)]


async def wait_for_tokens(settings: Settings, run: str, count: int, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while sum(e.type == "run.token" for e in await run_events(settings, run)) < count:
        assert asyncio.get_running_loop().time() < deadline, "the node streamed no tokens"
        await asyncio.sleep(0.05)


async def test_a_node_that_ended_while_nats_was_frozen_streams_its_whole_text_again(
    infra: Any, events_address: str, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path, free_port())
    settings = fault_settings(
        infra,
        events_address,
        QUEUE,
        NATS_URL=nats.start(),
        AGENT_WORKERS=1,
    )
    try:
        async with serve_agents(settings) as api:
            run = await create_run(
                api,
                workflow="workflows/echo",
                input={"message": " ".join(WORDS), "delay_ms": 300},
            )
            await wait_for_tokens(settings, run.name, 3)
            pid = nats.pid()
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # connected, and answering nothing
            try:
                # The node's 37 tokens left take ~11 s: nats-py leaves the frozen server after
                # 4-6 s (its PINGs unanswered), its next token then waits for NATS (up to
                # EVENTS_PUBLISH_TIMEOUT_SECONDS, 10 s) while the node runs on to its end.
                await asyncio.sleep(20)
            finally:
                os.kill(pid, signal.SIGCONT)
            done = await wait_status(api, run.name, *FINISHED, timeout=90)
            events = await run_events(settings, run.name)
    finally:
        await asyncio.to_thread(nats.stop)
    assert (S.RunStatus.Name(done.status), done.error) == ("RUN_STATUS_COMPLETED", "")
    assert done.attempt >= 2, "NATS froze under the node: its pick-up could not finish"
    # What a client shows: the tokens of the node's last start (an earlier start's text is
    # dropped on `run.resumed`, docs/agents.md).
    last_start = max(d["attempt"] for d in data(events, "run.node.started"))
    text = "".join(
        event_data(e)["text"]
        for e in events
        if e.type == "run.token" and event_data(e)["attempt"] == last_start
    )
    assert text.split() == WORDS, f"attempt {last_start} streamed {text!r}"
    assert done.output["message"].split() == WORDS
