"""The run screen says what the dashboard says (docs/dashboard.md): "retried" only when a worker
stopped and another continued (answering is not a retry: the run's `attempt` counts every
pick-up, and after one redelivery plus one answer the head read "attempt 3" where the dashboard
said "Retried 1×"), and a node a completed run never reached reads "skipped", not `·`. Fed the
events a real plan run published, through `RunScreen.apply`, the method the live app feeds."""

from __future__ import annotations

from typing import Any

import tui_data
from textual.widgets import Static
from tui_data import event

from amelia_cli.tui.app import AmeliaApp
from amelia_cli.tui.run_view import RunScreen


def text_of(screen: RunScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


def answered_after_a_redelivery() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The paused plan, picked up again by another worker (its first one stopped), answered
    "reject", completed: attempt 3 on the run."""
    run, events = tui_data.paused_plan()
    name = run["name"]
    events += [
        event(164, "run.resumed", name, {"reason": "redelivered", "attempt": 2}),
        event(165, "run.interrupted", name, {"node": "approval", "value": {"question": "?"}}),
        event(166, "run.resumed", name, {"reason": "answer", "attempt": 3}),
        event(167, "run.completed", name, {"attempt": 3}),
    ]
    return {**run, "status": "RUN_STATUS_COMPLETED", "attempt": 3}, events


async def test_head_counts_retries_as_the_dashboard_does_and_nodes_never_reached_are_skipped() -> (
    None
):
    run, events = answered_after_a_redelivery()
    app = AmeliaApp("http://127.0.0.1:9", live=False)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = RunScreen(run["name"])
        await app.push_screen(screen)
        screen.show_run(run)
        screen.nodes = {n: ["pending", ""] for n in ("discovery", "design", "approval", "planning")}
        for item in events:
            screen.apply(item, int(item["sequence"]))
        await pilot.pause()
        head = text_of(screen, "#run-head")
        assert "retried 1×" in head and "attempt" not in head, head
        nodes = text_of(screen, "#run-nodes")
        assert "planning skipped" in nodes and "· planning" not in nodes, nodes
        assert screen.nodes["approval"][0] == "done"


async def test_a_run_answered_once_has_no_retry_in_its_head() -> None:
    run, events = tui_data.paused_plan()
    name = run["name"]
    events += [
        event(164, "run.resumed", name, {"reason": "answer", "attempt": 2}),
        event(165, "run.failed", name, {"attempt": 2}),
    ]
    app = AmeliaApp("http://127.0.0.1:9", live=False)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = RunScreen(name)
        await app.push_screen(screen)
        screen.show_run({**run, "status": "RUN_STATUS_FAILED", "attempt": 2})
        screen.nodes = {n: ["pending", ""] for n in ("discovery", "design", "approval", "planning")}
        for item in events:
            screen.apply(item, int(item["sequence"]))
        await pilot.pause()
        assert "retried" not in text_of(screen, "#run-head")
        assert "attempt" not in text_of(screen, "#run-head")
        assert "planning not run" in text_of(screen, "#run-nodes")
