"""The run screen of a run queued behind its thread's run says so, as `amelia run` and the
dashboard do ("Queued behind runs/…: it starts once that run ends"), with the status "queued"
(it showed "…" and "waiting for tokens…"); once the run starts, it waits for tokens. Fed the
events the agents service publishes (`run.queued`, then the start), through `RunScreen.apply`,
the method the live app feeds, and the run as GetRun returns it."""

from __future__ import annotations

from textual.widgets import Static
from tui_data import event

from amelia_cli.tui.app import AmeliaApp
from amelia_cli.tui.run_view import RunScreen

NAME = "runs/7a1c0e52-3f4b-4c1d-9e2a-0b1c2d3e4f50"
BEHIND = "runs/0b9f1c2e-1111-4222-8333-944455556666"
THREAD = "threads/5d6e7f80-aaaa-4bbb-8ccc-0ddd1eee2fff"


def shown(screen: RunScreen) -> tuple[str, str, str]:
    """The head, the line under it about the queue and the output's first line, as shown."""
    head = str(screen.query_one("#run-head", Static).render())
    line = screen.query_one("#run-queued", Static)
    queued = " ".join(str(line.render()).split()) if line.display else ""
    return head, queued, screen.output.render_line(0).text.strip()


async def test_a_run_queued_behind_its_threads_run_says_so_until_it_starts() -> None:
    app = AmeliaApp("http://127.0.0.1:9", live=False)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = RunScreen(NAME)
        await app.push_screen(screen)
        # Its events come first (the live screen follows them at once), then GetRun's run.
        screen.apply(event(1, "run.queued", NAME, {"behind": BEHIND, "strategy": "enqueue"}), 1)
        run = {"name": NAME, "agent": "agents/slow", "thread": THREAD}
        screen.show_run(run | {"status": "RUN_STATUS_QUEUED", "queuedBehind": BEHIND})
        await pilot.pause()
        head, queued, output = shown(screen)
        assert "queued" in head and "…" not in head, head
        assert queued == f"Queued behind {BEHIND}: it starts once that run ends", queued
        assert output == "waiting for the thread's run to end…", output

        screen.apply(event(2, "agent.started", NAME, {}), 2)
        await pilot.pause()
        head, queued, output = shown(screen)
        assert "running" in head and not queued and output == "waiting for tokens…", output


async def test_a_run_opened_while_queued_behind_shows_it_from_get_run() -> None:
    """Opened after its `run.queued` event left the stream's window: GetRun's queuedBehind."""
    app = AmeliaApp("http://127.0.0.1:9", live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = RunScreen(NAME)
        await app.push_screen(screen)
        screen.show_run(
            {"name": NAME, "agent": "agents/slow", "status": "RUN_STATUS_QUEUED"}
            | {"queuedBehind": BEHIND}
        )
        await pilot.pause()
        head, queued, _ = shown(screen)
        assert "queued" in head and queued.startswith(f"Queued behind {BEHIND}: it"), queued
        assert screen.query_one("#run-queued").size.height == 2  # wrapped whole at 80 columns
