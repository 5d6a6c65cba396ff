"""A run's output shows every character, wrapped, at 80×24 and 120×40, while it streams and
once it ended (QA s26: a long plan's full-width lines lost their last 1-2 characters — "tasks"
read "task", "HTML" "HTM" — wrapped at the width from before the vertical scrollbar appeared,
then drawn beside it). A long marker (a run picked up again after an interruption) wraps too,
instead of being cut at the edge. Fed through `RunScreen.apply`, the method the live app feeds,
and read off the frame the terminal is sent."""

from __future__ import annotations

from typing import Any

import pytest
import tui_data
from textual.app import App
from tui_data import event

from amelia_cli.tui.app import AmeliaApp
from amelia_cli.tui.run_view import RunScreen
from amelia_cli.tui.stream import StreamView

# Words of every length, so that full-width lines end on every kind of word.
WORDS = [
    "the",
    "tasks",
    "also",
    "HTML",
    "plan",
    "writes",
    "a",
    "b",
    "page",
    "with",
    "CSS",
    "variables",
    "for",
    "each",
    "colour",
]
TEXT = " ".join(f"{WORDS[i % len(WORDS)]}{i % 7 or ''}" for i in range(900))


def frame(app: App[Any]) -> list[str]:
    """The terminal's rows as they are drawn."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def assert_whole(app: App[Any], view: StreamView) -> None:
    """Every wrapped line fits beside the scrollbar and the rows on screen show them whole."""
    region = view.scrollable_content_region
    lines = [text for text, _ in view._lines]
    # A space may hang past the edge (nobody sees it); a letter may not.
    too_wide = [line for line in lines if len(line.rstrip(" ")) > region.width]
    assert not too_wide, f"lines wider than the {region.width} cells shown: {too_wide[:3]}"
    rows = frame(app)
    top = view.scroll_offset.y
    for y in range(region.height):
        if top + y >= len(lines):
            break
        shown = rows[region.y + y][region.x : region.x + region.width]
        assert shown.rstrip() == lines[top + y].rstrip(" "), (shown, lines[top + y])


def words_of(view: StreamView) -> list[str]:
    return " ".join(text for text, marker in view._lines if not marker).split()


async def stream(app: AmeliaApp, pilot: Any, screen: RunScreen, check_every: int) -> None:
    subject = screen.run_name
    events = [
        event(10, "run.node.started", subject, {"node": "planning"}),
        *tui_data.tokens(11, subject, "planning", TEXT),
    ]
    for index, item in enumerate(events):
        screen.apply(item, int(item["sequence"]))
        if index % check_every == 0 and screen.output.chunks:
            await pilot.pause()
            assert_whole(app, screen.output)
    await pilot.pause()
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_a_long_output_shows_every_character_while_streaming_and_after(
    size: tuple[int, int],
) -> None:
    run = tui_data.run(1, "plan", "completed", seconds="9.000s", tokens=900)
    app = AmeliaApp("http://127.0.0.1:9", live=False)
    async with app.run_test(size=size) as pilot:
        screen = RunScreen(run["name"])
        await app.push_screen(screen)
        await pilot.pause()
        screen.show_run({**run, "status": "RUN_STATUS_RUNNING"})
        await stream(app, pilot, screen, check_every=37)
        screen.apply(event(2000, "run.completed", run["name"]), 2000)
        screen.show_run(run)
        await pilot.pause()
        view = screen.output
        assert view.show_vertical_scrollbar
        assert_whole(app, view)
        assert words_of(view) == TEXT.split()
        # Scrolled to the top, every line is still whole.
        view.scroll_home(animate=False, immediate=True)
        await pilot.pause()
        assert_whole(app, view)

    # Opened once it ended: its tokens all replayed at once.
    app = AmeliaApp("http://127.0.0.1:9", live=False)
    async with app.run_test(size=size) as pilot:
        screen = RunScreen(run["name"])
        await app.push_screen(screen)
        screen.show_run(run)
        await stream(app, pilot, screen, check_every=10_000)
        assert_whole(app, screen.output)
        assert words_of(screen.output) == TEXT.split()


async def test_an_interruption_marker_wraps_at_80_columns() -> None:
    run = tui_data.run(1, "plan", "running", tokens=10)
    subject = run["name"]
    app = AmeliaApp("http://127.0.0.1:9", live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = RunScreen(subject)
        await app.push_screen(screen)
        screen.show_run(run)
        await pilot.pause()
        for item in [
            event(10, "run.node.started", subject, {"node": "discovery"}),
            *tui_data.tokens(11, subject, "discovery", "some words first"),
            event(20, "run.resumed", subject, {"reason": "redelivered", "attempt": 2}),
        ]:
            screen.apply(item, int(item["sequence"]))
        await pilot.pause()
        await pilot.pause()
        view = screen.output
        assert_whole(app, view)
        marker = " ".join(text for text, is_marker in view._lines if is_marker)
        assert "it continues from its last checkpoint" in marker, marker
        drawn = " ".join(" ".join(frame(app)).split())
        assert "it continues from its last checkpoint; discovery runs again ──" in drawn, drawn
