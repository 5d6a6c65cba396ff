"""The run page's Activity list for a run cancelled while paused at a question: the events up to
the question and `run.cancelled` are listed, whether the page was open during the cancel or opened
after it. Reported as an empty list: the gateway's batching change (523a4a8) read `events` of
StreamRun's messages, which have none, so every run subscription failed with INTERNAL and the page
listed nothing (fixed in 6a290c1, `hub._events_of`); these tests fail on that code."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from dashboard_helpers import Mesh
from dashboard_pages import expect_status
from google.protobuf.struct_pb2 import Struct
from playwright.sync_api import Page, expect
from test_dashboard_features import _run, _wait_run

from amelia.v1 import events_pb2
from amelia_common.eventlog import EventLog
from amelia_common.nats_client import connect_nats
from amelia_common.settings import Settings

pytestmark = pytest.mark.slow

ACTIVITY = "#run-activity li"


def _paused(mesh: Mesh, message: str) -> str:
    run = _run(mesh, "approval", input={"message": message, "question": "Cancel me?"})
    _wait_run(mesh, run["name"], "RUN_STATUS_PAUSED", timeout=120)
    return str(run["name"])


def _publish_as_agents(mesh: Mesh, run: str, *events: tuple[str, dict[str, Any]]) -> None:
    """Store events about `run` as the agents service does (a client may not publish `run.*`)."""
    settings = Settings(NATS_URL=f"nats://127.0.0.1:{mesh.env['EMBEDDED_NATS_PORT']}")

    async def publish() -> None:
        nc = await connect_nats(settings, "test-dashboard-activity")
        try:
            log = EventLog(nc, settings, source="agents")
            for event_type, data in events:
                body = Struct()
                body.update(data)
                await log.publish_event(events_pb2.Event(type=event_type, subject=run, data=body))
        finally:
            await nc.drain()

    # In a thread: Playwright's sync API holds this thread's event loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, publish()).result(timeout=120)


def _expect_cancelled_activity(page: Page) -> None:
    expect_status(page, "RUN_STATUS_CANCELLED")
    expect(page.locator(f'{ACTIVITY}[data-type="run.cancelled"]')).to_have_count(1)
    expect(page.locator(f'{ACTIVITY}[data-type="run.interrupted"]')).to_have_count(1)
    types = page.locator(ACTIVITY).evaluate_all("(items) => items.map((li) => li.dataset.type)")
    assert types[-1] == "run.cancelled", types


def test_a_run_cancelled_while_the_page_shows_its_question_lists_its_activity(
    page: Page, mesh: Mesh
) -> None:
    name = _paused(mesh, "open during the cancel")
    page.goto(f"/#/runs/{name.split('/')[-1]}")
    expect(page.locator("#question")).to_have_text("Cancel me?")
    expect(page.locator(f'{ACTIVITY}[data-type="run.interrupted"]')).to_have_count(1)
    mesh.post(f"/v1/{name}:cancel", {"reason": "test done"})
    _expect_cancelled_activity(page)
    expect(page.locator("#question")).to_have_count(0)


def test_a_run_cancelled_while_paused_lists_its_activity_when_opened_later(
    page: Page, mesh: Mesh
) -> None:
    name = _paused(mesh, "opened after the cancel")
    mesh.post(f"/v1/{name}:cancel", {"reason": "test done"})
    _wait_run(mesh, name, "RUN_STATUS_CANCELLED", timeout=120)
    page.goto(f"/#/runs/{name.split('/')[-1]}")
    _expect_cancelled_activity(page)


def test_an_agents_tool_calls_read_as_what_it_called_and_got(page: Page, mesh: Mesh) -> None:
    """An agent's tool events carry the model's JSON arguments and a `result` or an `error`
    (docs/agents.md), not a subprocess's argv and exit code: no "exited undefined"."""
    name = _paused(mesh, "tool calls")
    _publish_as_agents(
        mesh,
        name,
        ("run.tool.called", {"tool": "read_file", "call_id": "c1", "args": {"path": "a.py"}}),
        ("run.tool.result", {"tool": "read_file", "call_id": "c1", "result": "print(1)"}),
        ("run.tool.result", {"tool": "read_file", "call_id": "c2", "error": "no such file"}),
    )
    page.goto(f"/#/runs/{name.split('/')[-1]}")
    expect(page.locator(f'{ACTIVITY}[data-type="run.tool.called"]')).to_contain_text(
        'tool read_file {"path":"a.py"}'
    )
    results = page.locator(f'{ACTIVITY}[data-type="run.tool.result"]')
    expect(results).to_contain_text(
        ['tool read_file returned "print(1)"', 'tool read_file failed: "no such file"']
    )
    mesh.post(f"/v1/{name}:cancel", {"reason": "test done"})
