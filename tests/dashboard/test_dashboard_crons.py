"""The Crons screen, as a user sees it at 1280×800 and 390×844 (no sideways scroll): a cron made
with the form is listed with its schedule, zone and thread; Pause turns it paused (in the API
too); Trigger now starts a run whose link opens it, and the card then counts it as its last run;
Delete asks inline and removes it; a bad schedule shows the API's own message under the field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from dashboard_helpers import Mesh
from dashboard_pages import expect_status, shot
from playwright.sync_api import Browser, Page, expect
from test_dashboard_features import DESKTOP, PHONE, _checked_page, _fits, _run, _wait_run

pytestmark = pytest.mark.slow

SIZES = {"desktop": DESKTOP, "phone": PHONE}

# A webhook the form sends (nothing listens: the crons here never fire on their own).
HOOK = "http://127.0.0.1:9/hooks/cron"


def _agent(mesh: Mesh) -> str:
    agent_id = f"digest-{uuid.uuid4().hex[:6]}"
    mesh.post(
        "/v1/agents",
        {"agentId": agent_id, "agent": {"displayName": "Morning digest", "model": "offline:echo"}},
    )
    return f"agents/{agent_id}"


def _fill_form(page: Page, agent: str, schedule: str, thread: str = "") -> None:
    page.goto("/#/crons")
    page.wait_for_selector(f'#cron-agent option[value="{agent}"]', state="attached")
    page.select_option("#cron-agent", agent)
    page.fill("#cron-schedule", schedule)
    page.fill("#cron-timezone", "Europe/Paris")
    page.fill("#cron-thread", thread)
    page.fill("#cron-input", '{"message": "what happened overnight"}')


@pytest.mark.parametrize("size", SIZES)
def test_create_pause_trigger_follow_and_delete_a_cron(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    agent = _agent(mesh)
    # On a phone, a cron on a thread (its id is a link that must wrap); on a desktop, none.
    thread = ""
    if size == "phone":
        first = _run(mesh, "chat", input={"message": "hello", "model": "offline:echo"})
        _wait_run(mesh, first["name"], "RUN_STATUS_COMPLETED")
        thread = str(first["thread"])
    with _checked_page(browser, mesh, SIZES[size]) as page:
        _fill_form(page, agent, "0 3 * * *", thread)
        page.fill("#cron-webhook", HOOK)
        page.click("#cron-create")
        card = page.locator("#crons-list li.cron").first
        expect(card.locator("h2")).to_have_text("0 3 * * * Europe/Paris")
        expect(card.locator("[data-field=target]")).to_have_text(agent.split("/")[-1])
        if thread:
            expect(card.locator("[data-field=thread] a")).to_have_text(thread.split("/")[-1])
        else:
            expect(card.locator("[data-field=thread]")).to_have_text("new thread each run")
        expect(card.locator("[data-field=last]")).to_have_text("none yet")
        cron = str(card.get_attribute("data-cron"))
        listed = mesh.get(f"/v1/{cron}")["cron"]
        assert listed["agent"] == agent and listed["timezone"] == "Europe/Paris"
        assert not listed.get("paused") and listed["nextRunTime"]
        assert listed["input"] == {"message": "what happened overnight"}
        assert listed["webhook"] == HOOK
        expect(card.locator("[data-field=webhook]")).to_have_text(HOOK)
        _fits(page, f"the new cron at {size}")
        shot(page, artifacts, f"crons-{size}-created")

        card.get_by_role("button", name="Pause").click()
        expect(card.locator(".badge")).to_have_text("Paused")
        expect(card.locator("[data-field=next]")).to_have_text("paused")
        expect(card.get_by_role("button", name="Resume")).to_be_visible()
        assert mesh.get(f"/v1/{cron}")["cron"]["paused"] is True

        # Trigger now runs it, paused or not; the notice links to the run.
        card.get_by_role("button", name="Trigger now").click()
        link = card.locator(".cron-message a")
        expect(link).to_be_visible()
        run_id = str(link.text_content())
        expect(card.locator("[data-field=counts]")).to_have_text("1 fired · 0 skipped · 0 failed")
        expect(card.locator("[data-field=last] a")).to_have_attribute("href", f"#/runs/{run_id}")
        shot(page, artifacts, f"crons-{size}-triggered")
        link.click()
        page.wait_for_url(f"**/#/runs/{run_id}")
        expect_status(page, "RUN_STATUS_COMPLETED")
        run = mesh.get(f"/v1/runs/{run_id}")["run"]
        assert run["agent"] == agent
        if thread:
            assert run["thread"] == thread

        # Delete asks first, inline; No keeps it, Yes removes it (in the API too).
        page.goto("/#/crons")
        card = page.locator(f'#crons-list li[data-cron="{cron}"]')
        card.get_by_role("button", name="Delete", exact=True).click()
        expect(card.get_by_role("group", name="Confirm deleting")).to_be_visible()
        _fits(page, f"the delete confirmation at {size}")
        card.get_by_role("button", name="No, keep it").click()
        expect(card.get_by_role("button", name="Delete", exact=True)).to_be_visible()
        card.get_by_role("button", name="Delete", exact=True).click()
        card.get_by_role("button", name="Yes, delete it").click()
        expect(card).to_have_count(0)
        missing = httpx.get(
            f"{mesh.url}/v1/{cron}", headers={"Authorization": f"Bearer {mesh.token}"}
        )
        assert missing.status_code == 404


def test_a_bad_schedule_shows_the_apis_message_under_the_field(
    browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    agent = _agent(mesh)
    refused = httpx.post(
        f"{mesh.url}/v1/crons",
        json={"cron": {"agent": agent, "schedule": "every morning", "timezone": "Europe/Paris"}},
        headers={"Authorization": f"Bearer {mesh.token}"},
    )
    assert refused.status_code == 400
    message = refused.json()["message"]
    assert "cron.schedule" in message
    before = len(mesh.get(f"/v1/crons?agent={agent}").get("crons", []))
    with _checked_page(browser, mesh, DESKTOP) as page:
        _fill_form(page, agent, "every morning")
        page.click("#cron-create")
        expect(page.locator("#cron-schedule-error")).to_have_text(message)
        expect(page.locator("#cron-schedule")).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#cron-schedule")).to_be_focused()
        if not mesh.get("/v1/crons").get("crons"):
            expect(page.locator("#crons-empty")).to_contain_text("amelia crons create")
        shot(page, artifacts, "crons-desktop-bad-schedule")
        # Bad JSON is caught in the page, under the input.
        page.fill("#cron-schedule", "*/5 * * * *")
        page.fill("#cron-input", "{not json")
        page.click("#cron-create")
        expect(page.locator("#cron-input-error")).to_contain_text("Not JSON")
        expect(page.locator("#cron-schedule-error")).to_be_empty()
        shot(page, artifacts, "crons-desktop-bad-json")
        # A webhook that is not http(s): the API's message under the webhook field.
        page.fill("#cron-input", "{}")
        page.fill("#cron-webhook", "file:///etc/passwd")
        page.click("#cron-create")
        expect(page.locator("#cron-webhook-error")).to_contain_text(
            "cron.webhook must be an http or https URL"
        )
        expect(page.locator("#cron-webhook")).to_be_focused()
    assert len(mesh.get(f"/v1/crons?agent={agent}").get("crons", [])) == before


def test_the_list_pages_with_more(browser: Browser, mesh: Mesh) -> None:
    agent = _agent(mesh)
    made = [
        mesh.post(
            "/v1/crons",
            {
                "cron": {
                    "agent": agent,
                    "schedule": f"{minute} 4 * * *",
                    "paused": True,
                    "input": {"message": "page me"},
                }
            },
        )["cron"]["name"]
        for minute in range(21)
    ]
    try:
        total = len(mesh.get("/v1/crons?pageSize=1000")["crons"])
        assert total > 20
        with _checked_page(browser, mesh, DESKTOP) as page:
            page.goto("/#/crons")
            cards = page.locator("#crons-list li.cron")
            expect(cards).to_have_count(20)
            while page.locator("#crons-more").is_visible():
                shown = cards.count()
                page.click("#crons-more")
                expect(cards).not_to_have_count(shown)
            expect(cards).to_have_count(total)
            names = cards.evaluate_all("(els) => els.map((el) => el.dataset.cron)")
            assert len(set(names)) == total and set(made) <= set(names)
    finally:
        for name in made:
            mesh.request("DELETE", f"/v1/{name}")


@pytest.mark.parametrize("size", SIZES)
def test_the_list_refreshes_itself_with_the_last_ticks_and_the_busy_strategy(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    """A cron on a thread, made through the API, shows what a tick does when the thread is busy
    and its end; triggered through the API (another tab, the CLI), its card shows the tick and
    the run it made, and a cron made elsewhere is listed, without a reload."""
    agent = _agent(mesh)
    first = _run(mesh, "chat", input={"message": "hello", "model": "offline:echo"})
    _wait_run(mesh, first["name"], "RUN_STATUS_COMPLETED")
    cron = mesh.post(
        f"/v1/{first['thread']}/crons",
        {
            "cron": {
                "agent": agent,
                "schedule": "0 3 * * *",
                "input": {"message": "digest"},
                "multitaskStrategy": "enqueue",
                "endTime": "2099-12-31T23:00:00Z",
            }
        },
    )["cron"]
    made = [cron["name"]]
    try:
        with _checked_page(browser, mesh, SIZES[size]) as page:
            page.goto("/#/crons")
            card = page.locator(f'#crons-list li[data-cron="{cron["name"]}"]')
            expect(card.locator("[data-field=multitask]")).to_have_text("Run after it (enqueue)")
            expect(card.locator("[data-field=end]")).to_contain_text("2099")
            expect(card.locator("[data-field=recent]")).to_have_text("none yet")
            page.evaluate("window.notReloaded = true")

            run = mesh.post(f"/v1/{cron['name']}:trigger", {})["run"]["name"]
            recent = card.locator("[data-field=recent] li")
            expect(recent).to_have_count(1, timeout=20_000)
            expect(recent.first).to_contain_text("fired")
            expect(recent.first).not_to_contain_text("queued behind")  # the thread was free
            run_id = run.split("/")[-1]
            expect(recent.first.locator("a")).to_have_attribute("href", f"#/runs/{run_id}")
            expect(card.locator("[data-field=counts]")).to_have_text(
                "1 fired · 0 skipped · 0 failed"
            )
            _wait_run(mesh, run, "RUN_STATUS_COMPLETED")

            other = mesh.post(
                "/v1/crons",
                {"cron": {"agent": agent, "schedule": "30 4 * * 1", "input": {"message": "x"}}},
            )["cron"]["name"]
            made.append(other)
            expect(page.locator(f'#crons-list li[data-cron="{other}"]')).to_have_count(
                1, timeout=20_000
            )
            assert page.evaluate("window.notReloaded") is True
            card.scroll_into_view_if_needed()
            _fits(page, f"the refreshed list at {size}")
            shot(page, artifacts, f"crons-{size}-refreshed")

            # The form's busy-thread choice and end go to the API.
            _fill_form(page, agent, "15 6 * * *", str(first["thread"]))
            page.select_option("#cron-multitask", "interrupt")
            page.fill("#cron-end", "2098-06-01T09:30")
            page.click("#cron-create")
            new = page.locator("#crons-list li.cron").first
            expect(new.locator("[data-field=multitask]")).to_have_text(
                "Stop it and run (interrupt)"
            )
            created = mesh.get(f"/v1/{new.get_attribute('data-cron')}")["cron"]
            made.append(created["name"])
            assert created["multitaskStrategy"] == "interrupt"
            assert created["endTime"].startswith("2098-06-01")
            shot(page, artifacts, f"crons-{size}-form-busy-end")
    finally:
        for name in made:
            mesh.request("DELETE", f"/v1/{name}")


def test_a_tick_the_scheduler_fires_shows_and_the_cron_then_ends(
    browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    """On the real clock (the mesh's own scheduler, up to a minute's wait): a cron due at the
    next minute, ending 30 s after it, shows its tick, then the Ended badge, without a reload.
    Paused then, it shows both badges and says it stays ended; so does a phone."""
    agent = _agent(mesh)
    now = datetime.now(UTC)
    tick = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    end = (tick + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    cron = mesh.post(
        "/v1/crons",
        {
            "cron": {
                "agent": agent,
                "schedule": "* * * * *",
                "input": {"message": "m"},
                "endTime": end,
            }
        },
    )["cron"]
    try:
        assert cron["ended"] is False and cron["nextRunTime"]
        with _checked_page(browser, mesh, DESKTOP) as page:
            page.goto("/#/crons")
            card = page.locator(f'#crons-list li[data-cron="{cron["name"]}"]')
            expect(card.locator("[data-field=recent]")).to_have_text("none yet")
            page.evaluate("window.notReloaded = true")
            recent = card.locator("[data-field=recent] li")
            expect(recent).to_have_count(1, timeout=120_000)
            expect(recent.first).to_contain_text("fired")
            expect(card.locator(".badge").first).to_have_text("Ended", timeout=20_000)
            expect(card.locator("[data-field=next]")).to_have_text("none (the schedule has ended)")
            assert page.evaluate("window.notReloaded") is True
            shot(page, artifacts, "crons-desktop-ended")
            title = card.locator("h2 .badge")
            expect(title).to_have_text(["Ended"])
            card.locator("[data-action=pause]").click()
            expect(title).to_have_text(["Ended", "Paused"])
            expect(card.locator(".cron-message")).to_have_text(
                "Cron paused. It has ended: no tick fires until its end is moved."
            )
            expect(card.locator("[data-action=pause]")).to_have_text("Resume")
            shot(page, artifacts, "crons-desktop-ended-paused")
        assert mesh.get(f"/v1/{cron['name']}")["cron"]["paused"] is True
        with _checked_page(browser, mesh, PHONE) as page:
            page.goto("/#/crons")
            card = page.locator(f'#crons-list li[data-cron="{cron["name"]}"]')
            expect(card.locator("h2 .badge")).to_have_text(["Ended", "Paused"])
            card.scroll_into_view_if_needed()
            _fits(page, "an ended, paused cron on a phone")
            shot(page, artifacts, "crons-phone-ended-paused")
            card.locator("[data-action=pause]").click()
            expect(card.locator("h2 .badge")).to_have_text(["Ended"])
            expect(card.locator(".cron-message")).to_have_text(
                "Cron resumed. It has ended: no tick fires until its end is moved."
            )
        shown = mesh.get(f"/v1/{cron['name']}")["cron"]
        assert shown["ended"] is True and shown["firedCount"] == "1"  # int64: a JSON string
        assert shown["recentActions"][0]["scheduleTime"].startswith(tick.strftime("%Y-%m-%dT%H:%M"))
    finally:
        mesh.request("DELETE", f"/v1/{cron['name']}")
