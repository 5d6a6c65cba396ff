"""Outages as a user sees them (QA s26 items 1-3): screens that failed to load because the
agents service was down load again by themselves once it is back (the inbox's count of runs
waiting for an answer too), a hung service reads "Loading…", Send waits for its target, and the
"● Live" indicator turns "Stalled" with a notice while the gateway is frozen or the events
service's NATS is, then Live again."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dashboard_helpers import Mesh
from dashboard_pages import shot
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Route, expect

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"
# What an outage makes the browser log (a refused request, a dropped socket): expected here.
OUTAGE_NOISE = ("status of 50", "ERR_", "WebSocket", "Failed to load resource")


def _unit_pid(mesh: Mesh, unit: str) -> int | None:
    """The unit's pid; None while it is not running (the supervisor restarting it)."""
    state = json.loads((mesh.root / "data" / "run" / "mesh.json").read_text())
    pid = state["units"][unit]["pid"]
    return None if pid is None else int(pid)


def _wait_serving(mesh: Mesh, old_pid: int | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = mesh.get("/v1/status", timeout=5)
            pid = _unit_pid(mesh, "agents")
            restarted = old_pid is None or (pid is not None and pid != old_pid)
            if restarted and isinstance(last, dict) and last.get("status") == "SERVING":
                return
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise AssertionError(f"the mesh is not SERVING again: {last}\n{mesh.logs()}")


def _run(mesh: Mesh, workflow: str, **run: object) -> dict[str, object]:
    body = {"run": {"workflow": f"workflows/{workflow}", **run}, "requestId": str(uuid.uuid4())}
    created: dict[str, object] = mesh.post("/v1/runs", body)["run"]
    return created


def _wait_status(mesh: Mesh, name: object, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while mesh.get(f"/v1/{name}")["run"]["status"] != status:
        assert time.monotonic() < deadline, f"{name} never became {status}"
        time.sleep(0.2)


class Problems(list[str]):
    """Uncaught exceptions (and console errors that are not the outage's own)."""


def _context(browser: Browser, mesh: Mesh, viewport: dict[str, int]) -> BrowserContext:
    context = browser.new_context(viewport=viewport, base_url=mesh.url)  # type: ignore[arg-type]
    context.set_default_timeout(30_000)
    return context


def _page(context: BrowserContext, problems: Problems, route: str) -> Page:
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and not any(noise in message.text for noise in OUTAGE_NOISE):
            problems.append(f"console: {message.text}")

    page.on("console", console)
    page.goto(route)
    return page


@pytest.fixture
def signed_in(browser: Browser, mesh: Mesh) -> Iterator[tuple[BrowserContext, Problems]]:
    """A desktop context whose localStorage holds the token."""
    context = _context(browser, mesh, DESKTOP)
    problems = Problems()
    page = _page(context, problems, f"/?token={mesh.token}#/status")
    expect(page.locator("#connection"), "the indicator (its title says why)").to_have_attribute(
        "data-state", "open"
    )
    page.close()
    try:
        yield context, problems
    finally:
        context.close()
    assert not problems, problems


def test_screens_and_the_inbox_come_back_after_the_agents_service_is_killed(
    signed_in: tuple[BrowserContext, Problems], mesh: Mesh, artifacts: Path
) -> None:
    """QA s26 items 1 and 2: kill -9 the agents service with a run paused, open the screens at
    once: once `amelia up` has started it again, each shows its data without a reload — the
    inbox's "run waits for an answer", the threads, the runs and their start form, the crons
    form's targets, the thread's Send form (old code: the inbox stayed hidden and the screens
    kept "… unavailable" with empty tables until a reload)."""
    context, problems = signed_in
    paused = _run(mesh, "approval", input={"message": "outage", "question": "Still waiting?"})
    _wait_status(mesh, paused["name"], "RUN_STATUS_PAUSED")
    thread = str(paused["thread"]).split("/")[-1]
    try:
        old = _unit_pid(mesh, "agents")
        assert old is not None, "the agents service is not running"
        os.kill(old, signal.SIGKILL)
        pages = {
            route: _page(context, problems, f"/#/{route}")
            for route in ("status", "threads", "runs", "crons", f"threads/{thread}")
        }
        _wait_serving(mesh, old)
        shot(pages["runs"], artifacts, "outage-runs-after-agents-back")
        for route, page in pages.items():
            inbox = page.locator("#inbox")
            expect(inbox, f"{route}: the inbox").to_be_visible(timeout=40_000)
            assert int(inbox.get_attribute("data-count") or 0) >= 1
        threads = pages["threads"]
        expect(
            threads.locator(f'#threads-table tr[data-thread="{paused["thread"]}"]')
        ).to_be_visible()
        expect(threads.locator("main .notice.error")).to_have_count(0)
        runs = pages["runs"]
        expect(runs.locator(f'#runs-table tr[data-run="{paused["name"]}"]')).to_be_visible()
        expect(
            runs.locator("#start-run #run-target option[value='workflows/chat']")
        ).to_be_attached()
        expect(runs.locator("main .notice.error")).to_have_count(0)
        crons = pages["crons"]
        expect(crons.locator("#cron-agent option[value='workflows/chat']")).to_be_attached()
        expect(crons.locator("#cron-agent-error .notice")).to_have_count(0)
        view = pages[f"threads/{thread}"]
        expect(view.locator("#thread-target")).to_have_text("approval")
        expect(view.locator("#thread-send")).to_be_enabled()
        expect(view.locator("#thread-conversation .turn.user")).to_have_count(1)
        shot(view, artifacts, "outage-thread-after-agents-back")
    finally:
        _wait_serving(mesh)
        mesh.post(f"/v1/{paused['name']}:cancel", {"reason": "test over"})


def _unavailable(route: Route) -> None:
    body = {
        "code": 14,
        "message": "the agents service at 127.0.0.1:1 is unavailable",
        "details": [],
    }
    route.fulfill(status=503, content_type="application/json", body=json.dumps(body))


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_hung_then_unavailable_service_reads_loading_then_its_data(
    browser: Browser, mesh: Mesh, artifacts: Path, size: str
) -> None:
    """QA s26 item 2 with the gateway's answers held, then refused (UNAVAILABLE), then let
    through: "Loading…" while nothing came (an empty table read as "no threads"), the error
    with "Trying again in N s" once refused, the data by itself afterwards; the thread's Send is
    disabled and its target "…" until its runs are read."""
    viewport = DESKTOP if size == "desktop" else PHONE
    done = _run(mesh, "echo", input={"message": "hung then back"})
    _wait_status(mesh, done["name"], "RUN_STATUS_COMPLETED")
    thread = str(done["thread"]).split("/")[-1]
    context = _context(browser, mesh, viewport)
    problems = Problems()
    try:
        page = _page(context, problems, f"/?token={mesh.token}#/status")
        page.wait_for_selector("#connection[data-state=open]")
        mode = {"now": "hang"}
        held: list[Route] = []

        def agents_calls(route: Route) -> None:
            if mode["now"] == "hang":
                held.append(route)
            elif mode["now"] == "refuse":
                _unavailable(route)
            else:
                route.continue_()

        page.route(re.compile(r".*/v1/(threads|runs|agents|workflows)(\?.*)?$"), agents_calls)
        page.goto("/#/threads")
        expect(page.locator("#threads-table tbody")).to_contain_text("Loading threads…")
        page.goto(f"/#/threads/{thread}")
        expect(page.locator("#thread-send")).to_be_disabled()
        expect(page.locator("#thread-target")).to_have_text("…")
        expect(page.locator("#thread-conversation")).to_contain_text("Loading the thread's runs…")
        mode["now"] = "refuse"
        for route in held:
            _unavailable(route)
        held.clear()
        page.goto("/#/threads")
        notice = page.locator("main .notice.error", has_text="Trying again in")
        expect(notice).to_be_visible()
        expect(notice).to_contain_text("the agents service at 127.0.0.1:1 is unavailable")
        shot(page, artifacts, f"outage-threads-{size}-refused")
        assert page.evaluate(NO_SIDEWAYS_SCROLL)
        mode["now"] = "through"
        expect(page.locator(f'#threads-table tr[data-thread="{done["thread"]}"]')).to_be_visible(
            timeout=15_000
        )
        expect(page.locator("main .notice.error")).to_have_count(0)
        shot(page, artifacts, f"outage-threads-{size}-back")

        mode["now"] = "refuse"
        page.goto(f"/#/threads/{thread}")
        expect(page.locator("#thread-error .notice", has_text="Trying again in")).to_be_visible()
        expect(page.locator("#thread-send")).to_be_disabled()
        mode["now"] = "through"
        expect(page.locator("#thread-target")).to_have_text("echo", timeout=15_000)
        expect(page.locator("#thread-send")).to_be_enabled()
        expect(page.locator("#thread-error .notice")).to_have_count(0)

        mode["now"] = "refuse"
        page.goto("/#/runs")
        expect(page.locator("#runs-table tbody")).to_contain_text("Loading runs…")
        expect(page.locator("main .notice.error", has_text="Trying again in").first).to_be_visible()
        shot(page, artifacts, f"outage-runs-{size}-refused")
        assert page.evaluate(NO_SIDEWAYS_SCROLL)
        mode["now"] = "through"
        expect(page.locator("#start-run")).to_be_visible(timeout=15_000)
        expect(page.locator(f'#runs-table tr[data-run="{done["name"]}"]')).to_be_visible()

        mode["now"] = "refuse"
        page.goto("/#/crons")
        expect(
            page.locator("#cron-agent-error .notice", has_text="Trying again in")
        ).to_be_attached()
        mode["now"] = "through"
        expect(page.locator("#cron-agent option[value='workflows/echo']")).to_be_attached(
            timeout=15_000
        )
        expect(page.locator("#cron-agent-error .notice")).to_have_count(0)
    finally:
        context.close()
    assert not problems, problems


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_live_turns_stalled_while_the_gateway_is_frozen(
    browser: Browser, mesh: Mesh, artifacts: Path, size: str
) -> None:
    """QA s26 item 3: the gateway SIGSTOPped keeps its sockets open and silent; the indicator read
    "● Live" throughout. Unanswered pings now turn it "Stalled" with a notice; Live again after
    SIGCONT."""
    context = _context(browser, mesh, DESKTOP if size == "desktop" else PHONE)
    problems = Problems()
    try:
        page = _page(context, problems, f"/?token={mesh.token}#/events")
        indicator = page.locator("#connection")
        expect(indicator).to_have_attribute("data-state", "open")
        expect(page.locator("#feed-notice")).to_be_hidden()
        pid = mesh.gateway_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            expect(indicator).to_have_attribute("data-state", "stalled", timeout=25_000)
            expect(indicator).to_have_text("Stalled")
            notice = page.locator("#feed-notice")
            expect(notice).to_be_visible()
            expect(notice).to_contain_text("no heartbeat from the gateway")
            shot(page, artifacts, f"outage-stalled-gateway-{size}")
            assert page.evaluate(NO_SIDEWAYS_SCROLL)
        finally:
            os.kill(pid, signal.SIGCONT)
        expect(indicator).to_have_attribute("data-state", "open", timeout=20_000)
        expect(indicator).to_have_text("Live")
        expect(page.locator("#feed-notice")).to_be_hidden()
    finally:
        context.close()
    assert not problems, problems


def test_live_turns_stalled_while_nats_is_frozen(
    browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    """QA s26 item 3: NATS SIGSTOPped — the gateway answers, its heartbeats come, but the events
    service is not serving and no event flows; the Status screen said "Not serving" while the
    indicator said Live. It now reads Stalled, naming the events service, and Live once NATS
    is back."""
    context = _context(browser, mesh, DESKTOP)
    problems = Problems()
    try:
        page = _page(context, problems, f"/?token={mesh.token}#/events")
        indicator = page.locator("#connection")
        expect(indicator).to_have_attribute("data-state", "open")
        pid = _unit_pid(mesh, "nats")
        assert pid is not None, "nats-server is not running"
        os.kill(pid, signal.SIGSTOP)
        try:
            expect(indicator).to_have_attribute("data-state", "stalled", timeout=30_000)
            expect(page.locator("#feed-notice")).to_contain_text("events service")
            shot(page, artifacts, "outage-stalled-nats-desktop")
        finally:
            os.kill(pid, signal.SIGCONT)
        expect(indicator).to_have_attribute("data-state", "open", timeout=45_000)
        expect(page.locator("#feed-notice")).to_be_hidden()
    finally:
        context.close()
        _wait_serving(mesh)
    assert not problems, problems
