"""Snapshots of the TUI's main screens at 80×24 and 160×48 (pytest-textual-snapshot).

The app runs unconnected (`live=False`) and each screen is given fixed data (tui_data) through
the same methods the live app feeds: a run's events through `RunScreen.apply`, the list through
`show_runs`, and so on. Times are shown in UTC. A changed frame fails with a report of both
images; after a deliberate change, `pytest tests/tui --snapshot-update` records the new ones.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import tui_data
from textual.pilot import Pilot
from textual.widgets import Input

from amelia_cli.tui.app import AmeliaApp, HelpScreen
from amelia_cli.tui.documents import DocumentsScreen
from amelia_cli.tui.events_view import EventsScreen
from amelia_cli.tui.run_view import RunScreen
from amelia_cli.tui.runs import RunsScreen
from amelia_cli.tui.start import StartRunScreen
from amelia_cli.tui.thread_view import ThreadScreen
from amelia_cli.tui.threads import ThreadsScreen

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]
Scene = Callable[[Pilot[None]], Awaitable[None]]


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def app() -> AmeliaApp:
    return AmeliaApp("http://127.0.0.1:8000", live=False)


async def settle(pilot: Pilot[None]) -> None:
    """Connected, as far as the top bar knows; no blinking cursor in the frame."""
    pilot.app.connection = "open"  # type: ignore[attr-defined]
    await pilot.pause()
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()


async def runs_list(pilot: Pilot[None]) -> None:
    screen = pilot.app.screen
    assert isinstance(screen, RunsScreen)
    screen.show_runs(tui_data.RUNS)
    await settle(pilot)


async def open_run(pilot: Pilot[None], run: dict[str, Any], events: list[dict[str, Any]]) -> None:
    screen = RunScreen(run["name"])
    await pilot.app.push_screen(screen)
    screen.show_run(run)
    for event in events:
        screen.apply(event, int(event["sequence"]))
    await settle(pilot)


async def paused_plan(pilot: Pilot[None]) -> None:
    await open_run(pilot, *tui_data.paused_plan())


async def chat_passages(pilot: Pilot[None]) -> None:
    await open_run(pilot, *tui_data.completed_chat())
    await pilot.press("p")
    await settle(pilot)


async def events_feed(pilot: Pilot[None]) -> None:
    await pilot.app.switch_mode("events")
    screen = pilot.app.screen
    assert isinstance(screen, EventsScreen)
    screen.query_one("#ev-types", Input).value = "run.*, document.*"
    for event in tui_data.EVENTS:
        screen.add_event(event, int(event["sequence"]))
    await settle(pilot)


async def document_search(pilot: Pilot[None]) -> None:
    await pilot.app.switch_mode("documents")
    screen = pilot.app.screen
    assert isinstance(screen, DocumentsScreen)
    screen.show_documents(tui_data.DOCUMENTS)
    screen.query_one("#doc-query", Input).value = "which river do the zebras cross"
    screen.show_hits("which river do the zebras cross", tui_data.HITS)
    await settle(pilot)


async def start_form(pilot: Pilot[None]) -> None:
    form = StartRunScreen()
    await pilot.app.push_screen(form)
    form.workflows, form.agents = tui_data.WORKFLOWS, tui_data.AGENTS
    form.query_one("#start-target", Input).value = "chat"
    await form.show_targets()
    await settle(pilot)


async def help_keys(pilot: Pilot[None]) -> None:
    await pilot.app.push_screen(HelpScreen())
    await settle(pilot)


async def threads_list(pilot: Pilot[None]) -> None:
    await pilot.app.switch_mode("threads")
    screen = pilot.app.screen
    assert isinstance(screen, ThreadsScreen)
    screen.show_threads(tui_data.THREADS)
    await settle(pilot)


async def open_thread(pilot: Pilot[None]) -> ThreadScreen:
    await pilot.app.switch_mode("threads")
    screen = ThreadScreen(tui_data.THREAD)
    await pilot.app.push_screen(screen)
    screen.metadata = {"project": "cli-flags"}
    history = tui_data.THREAD_HISTORY
    screen.show_thread(history[0], tui_data.THREAD_RUNS, history)
    await settle(pilot)
    return screen


async def thread_state(pilot: Pilot[None]) -> None:
    await open_thread(pilot)


async def thread_history(pilot: Pilot[None]) -> None:
    await open_thread(pilot)
    await pilot.press("h")
    await settle(pilot)


SCENES: dict[str, Scene] = {
    "runs": runs_list,
    "run-paused": paused_plan,
    "run-passages": chat_passages,
    "events": events_feed,
    "documents": document_search,
    "start": start_form,
    "help": help_keys,
    "threads": threads_list,
    "thread-state": thread_state,
    "thread-history": thread_history,
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scene", list(SCENES))
def test_screen(scene: str, size: tuple[int, int], snap_compare: Any) -> None:
    assert snap_compare(app(), terminal_size=size, run_before=SCENES[scene])
