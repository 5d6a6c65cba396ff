"""A thread's State tab: a JSON value's line too long for the screen wraps under its own
indentation (QA s26: at 80 columns the continuation lines began at the left edge, so the JSON's
shape was lost). Fixed data, drawn at 80×24."""

from __future__ import annotations

from typing import Any

import tui_data
from textual.app import App

from amelia_cli.tui.app import AmeliaApp
from amelia_cli.tui.thread_view import ThreadScreen

LONG = (
    "a design written as one long line: a theme switch stored with the user's settings, "
    "CSS variables for every colour, one set per theme, contrast checked against WCAG AA"
)


def frame(app: App[Any]) -> list[str]:
    return [strip.text for strip in app.screen._compositor.render_strips()]


async def test_a_long_json_line_wraps_under_its_indentation() -> None:
    state = dict(tui_data.THREAD_HISTORY[0])
    state["values"] = {**state["values"], "plan": {"steps": [{"title": "theme", "why": LONG}]}}
    app = AmeliaApp("http://127.0.0.1:9", live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.switch_mode("threads")
        screen = ThreadScreen(tui_data.THREAD)
        await app.push_screen(screen)
        screen.show_thread(state, tui_data.THREAD_RUNS, [state])
        await pilot.pause()
        box = screen.query_one("#thread-state-text")
        box.scroll_visible(animate=False, immediate=True)
        screen.query_one("#thread-state-text").parent.scroll_end(animate=False, immediate=True)  # type: ignore[union-attr]
        await pilot.pause()
        rows = frame(app)
        start = next(i for i, row in enumerate(rows) if '"why": "a design' in row)
        indent = rows[start].index('"why"')
        assert indent >= 8, rows[start]  # 2 for the value, 6 for its depth in the JSON
        # Every continuation line of it starts under the key's indentation, not at the edge.
        following = rows[start + 1 : start + 4]
        continued = [row for row in following if row.strip() and not row.strip().startswith("}")]
        assert continued, rows
        for row in continued:
            words = row[:indent].strip()
            assert not words, f"a continuation line begins left of its indentation: {row!r}"
        shown = " ".join(" ".join(rows[start : start + 4]).split())
        assert "contrast checked against WCAG AA" in shown, rows[start : start + 4]
