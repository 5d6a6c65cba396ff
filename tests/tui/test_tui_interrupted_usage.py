"""A run whose first attempt was interrupted in the middle of a node counts that node's calls
twice in its total (a bill counts every call), and the run screen says how much of the total
that was — "of which … in interrupted attempts" — so the total is not a mystery next to what
its nodes used (QA s26 H2); `amelia runs show` gives the same figures. The run is made for
real (interrupted_usage.py: a worker SIGKILLed in node b, another runs b again) on the TUI
tests' database and events, and read through their gateway and agents service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agents_fake_llm import FakeOpenAI, fake_openai
from cli_helpers import amelia
from interrupted_usage import CALL_IN, OUT, Files, api_settings, interrupted_run
from test_cli_output import cli_env
from textual.widgets import Static
from tui_helpers import TuiMesh, on_screen, running_tui, wait_until

from amelia.v1 import agents_pb2_grpc
from amelia_agents.server import build_service
from amelia_cli.tui.run_view import RunScreen
from amelia_common.grpc_client import aio_channel

__all__ = ["fake_openai"]  # the fixture, from tests/agents_fake_llm.py

TOTAL_IN, TOTAL_OUT = 4 * CALL_IN, sum(OUT.values()) + OUT["b"]


@pytest.fixture(scope="module")
async def interrupted(
    infra: object,
    tui_mesh: TuiMesh,
    fake_openai: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[str]:
    """The run's name: made on the TUI mesh's events, by workers of a queue of their own."""
    settings = api_settings(infra, tui_mesh.gateway.env["EVENTS_ADDRESS"])
    service = await build_service(settings)
    port = await service.start()
    channel = aio_channel(f"127.0.0.1:{port}", settings)
    try:
        files = Files(infra.settings(), tmp_path_factory.mktemp("interrupted"))  # type: ignore[attr-defined]
        model = f"openai:transcript@{fake_openai.url}/v1"
        yield await interrupted_run(agents_pb2_grpc.AgentServiceStub(channel), files, model)
    finally:
        await channel.close()
        await service.stop(1.0)


def head_of(screen: RunScreen) -> str:
    """The head and the line under it, as shown ("" until they are mounted)."""
    lines = [screen.query(f"#run-{part}") for part in ("head", "interrupted")]
    return "\n".join(str(w.first(Static).render()) for w in lines if w and w.first().display)


@pytest.mark.parametrize(
    ("width", "said"),
    [
        (
            160,
            f"tokens {TOTAL_IN} in / {TOTAL_OUT} out, of which {CALL_IN} in / {OUT['b']} out"
            " in interrupted attempts",
        ),
        # At 80 columns the head has no room for it: a line under it says it.
        (
            80,
            f"of its {TOTAL_IN} in / {TOTAL_OUT} out tokens, {CALL_IN} in / {OUT['b']} out in"
            " interrupted attempts",
        ),
    ],
)
async def test_the_run_screen_says_the_interrupted_attempts_share_of_the_tokens(
    tui_mesh: TuiMesh, interrupted: str, width: int, said: str
) -> None:
    async with running_tui(tui_mesh.url, size=(width, 30)) as pilot:
        pilot.app.open_run(interrupted)
        await wait_until(lambda: isinstance(pilot.app.screen, RunScreen), "the run screen")
        screen = on_screen(pilot, RunScreen)
        await wait_until(lambda: said in head_of(screen), said, seen=lambda: head_of(screen))
        assert head_of(screen).count("interrupted attempts") == 1, head_of(screen)
        if width > 80:  # (the head at 80 columns has no room for it)
            await wait_until(
                lambda: "retried 1×" in head_of(screen), "the retry", seen=lambda: head_of(screen)
            )


async def test_runs_show_gives_the_interrupted_attempts_share(
    tui_mesh: TuiMesh, interrupted: str, tmp_path: Path
) -> None:
    code, shown = await asyncio.to_thread(
        amelia, cli_env(tui_mesh, tmp_path / "none"), "runs", "show", interrupted
    )
    assert code == 0, shown
    usage = json.loads(shown)["usage"]
    assert usage == {
        "inputTokens": str(TOTAL_IN),
        "outputTokens": str(TOTAL_OUT),
        "interruptedInputTokens": str(CALL_IN),
        "interruptedOutputTokens": str(OUT["b"]),
    }, shown
