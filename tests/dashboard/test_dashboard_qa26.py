"""QA s26 items 4 and 5: a legal 63-character agent id and a display name with U+202E on every
screen that shows them (no sideways scroll at 390×844, the name isolated from the text around
it), and the small things: a cancelled step's own look, documents ("1 chunk", decoded source
paths, the buttons' cell in its row), one accessible name per select, a focused field below the
phone's sticky top bar, event rows with their time and subject on a phone, thread previews of
three lines at most beside "Last active", and a refused event filter that says only that."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dashboard_helpers import Mesh
from dashboard_pages import open_signed_in, shot
from playwright.sync_api import Browser, Page, expect

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
SIZES = {"desktop": DESKTOP, "phone": PHONE}


def _wait_status(
    mesh: Mesh, name: object, *statuses: str, timeout: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, object] = mesh.get(f"/v1/{name}")["run"]
        if run["status"] in statuses:
            return run
        assert time.monotonic() < deadline, f"{name} stayed {run['status']}"
        time.sleep(0.2)


@pytest.fixture(params=["desktop", "phone"])
def screen(request: pytest.FixtureRequest, browser: Browser, mesh: Mesh) -> Iterator[Page]:
    context, page, problems = open_signed_in(browser, mesh, SIZES[request.param])
    try:
        yield page
    finally:
        context.close()
    assert not problems, problems


def _size(page: Page) -> str:
    viewport = page.viewport_size
    assert viewport is not None
    return "phone" if viewport["width"] < 600 else "desktop"


def _fits(page: Page, what: str) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.evaluate("window.innerWidth"), f"{what}: the page is {width} px wide"


def _agent(mesh: Mesh, agent_id: str, display_name: str = "") -> str:
    agent = {"model": "offline:echo", **({"displayName": display_name} if display_name else {})}
    mesh.post("/v1/agents", {"agent": agent, "agentId": agent_id})
    return f"agents/{agent_id}"


def test_a_63_character_agent_id_and_a_bidi_name_fit_every_screen(
    screen: Page, mesh: Mesh, artifacts: Path
) -> None:
    """Old code at 390 px: the run page 593 px wide, a thread's page 498 px; a U+202E in a
    display name turned "(offline:echo)" into "(ohce:enilffo)" in the selects."""
    page = screen
    size = _size(page)
    tag = uuid.uuid4().hex
    long_id = ("q" + tag * 2)[:63]
    long_agent = _agent(mesh, long_id)
    rlo_agent = _agent(mesh, f"rlo-{tag[:8]}", "evil \u202eoffline echo")
    body = {
        "run": {"agent": long_agent, "input": {"message": "hello long agent"}},
        "requestId": str(uuid.uuid4()),
    }
    run = mesh.post("/v1/runs", body)["run"]
    run = _wait_status(mesh, run["name"], "RUN_STATUS_COMPLETED")
    run_id = str(run["name"]).split("/")[-1]
    thread_id = str(run["thread"]).split("/")[-1]
    for route, ready in (
        ("#/runs", f'#runs-table tr[data-run="{run["name"]}"]'),
        (f"#/runs/{run_id}", "#run-status [data-status]"),
        (f"#/runs?target={long_agent}", f'#runs-table tr[data-run="{run["name"]}"]'),
        ("#/threads", f'#threads-table tr[data-thread="{run["thread"]}"]'),
        (f"#/threads/{thread_id}", "#thread-conversation .turn.user"),
        ("#/crons", f'#cron-agent option[value="{long_agent}"]'),
    ):
        page.goto(f"/{route}")
        page.locator(ready).first.wait_for(state="attached")
        _fits(page, f"{route} at {size}")
        for select in page.locator("main select").all():
            if select.is_visible():
                box = select.bounding_box()
                assert box is not None
                assert box["x"] + box["width"] <= page.evaluate("window.innerWidth") + 0.5, route
        name = re.sub(r"[^a-z0-9]+", "-", route.lower()).strip("-")[:40]
        shot(page, artifacts, f"qa26-long-id-{size}-{name}")
    # The Runs screen: the name isolated in both selects' options and in the agents list.
    page.goto("/#/runs")
    option = page.locator(f'#run-target option[value="{rlo_agent}"]')
    expect(option).to_be_attached()
    assert option.text_content() == "\u2068evil \u202eoffline echo\u2069 (\u2068offline:echo\u2069)"
    filter_option = page.locator(f'#runs-target option[value="{rlo_agent}"]')
    assert filter_option.text_content() == "agent \u2068evil \u202eoffline echo\u2069"
    page.locator("#agents-card > summary").click()
    label = page.locator(f'#agents-list li[data-agent="{rlo_agent}"] .agent-label')
    expect(label.locator("bdi")).to_have_text("evil \u202eoffline echo")
    expect(label).to_contain_text("· offline:echo")
    page.goto("/#/crons")
    cron_option = page.locator(f'#cron-agent option[value="{rlo_agent}"]')
    expect(cron_option).to_be_attached()
    assert cron_option.text_content() == "\u2068evil \u202eoffline echo\u2069"
    for agent in (long_agent, rlo_agent):
        httpx.delete(
            f"{mesh.url}/v1/{agent}", headers={"Authorization": f"Bearer {mesh.token}"}
        ).raise_for_status()


def test_the_two_runs_selects_have_their_own_names(screen: Page) -> None:
    """Both read "Workflow or agent" to a screen reader (the start form's and the list's)."""
    page = screen
    page.goto("/#/runs")
    expect(page.locator("#start-run")).to_be_visible()
    expect(page.get_by_role("combobox", name="Workflow or agent", exact=True)).to_have_count(1)
    expect(page.get_by_role("combobox", name="Show runs of", exact=True)).to_have_count(1)


def test_a_cancelled_step_is_not_drawn_as_done(screen: Page, mesh: Mesh, artifacts: Path) -> None:
    """The steps timeline drew a cancelled step's bar green, as a done one."""
    page = screen
    release = Path(mesh.root) / f"release-{uuid.uuid4().hex}"
    body = {
        "run": {"workflow": "workflows/hold", "input": {"release": str(release)}},
        "requestId": str(uuid.uuid4()),
    }
    held = mesh.post("/v1/runs", body)["run"]
    _wait_status(mesh, held["name"], "RUN_STATUS_RUNNING")
    mesh.post(f"/v1/{held['name']}:cancel", {"reason": "a cancelled step"})
    release.touch()
    _wait_status(mesh, held["name"], "RUN_STATUS_CANCELLED")
    page.goto(f"/#/runs/{str(held['name']).split('/')[-1]}")
    step = page.locator('#steps-card .step[data-node="hold"]')
    expect(step).to_have_attribute("data-state", "stopped", timeout=30_000)
    expect(step.locator(".step-state")).to_have_text("cancelled")
    look = step.locator(".bar").evaluate(
        "bar => { const s = getComputedStyle(bar); return [s.backgroundColor, s.backgroundImage]; }"
    )
    done = page.evaluate("getComputedStyle(document.body).getPropertyValue('--ok').trim()")
    assert "gradient" in look[1], f"a cancelled bar is drawn as {look}"
    assert look[0] != done
    shot(page, artifacts, f"qa26-cancelled-step-{_size(page)}")


def _upload(mesh: Mesh, name: str, text: str, **fields: str) -> dict[str, object]:
    response = httpx.post(
        f"{mesh.url}/v1/documents",
        headers={"Authorization": f"Bearer {mesh.token}"},
        data=fields,
        files={"file": (name, text.encode(), "text/plain")},
        timeout=60,
    )
    response.raise_for_status()
    document: dict[str, object] = response.json()["document"]
    return document


def test_documents_read_one_chunk_a_decoded_path_and_keep_their_buttons_in_the_row(
    screen: Page, mesh: Mesh, artifacts: Path
) -> None:
    page = screen
    tag = uuid.uuid4().hex[:8]
    encoded = f"file:///docs/%D8%B9%D8%B1%D8%A8%D9%8A-{tag}.txt"
    doc = _upload(mesh, f"arabic-{tag}.txt", "One short passage.", sourceUri=encoded)
    page.goto("/#/documents")
    row = page.locator(f'#docs-table tr[data-document="{doc["name"]}"]')
    expect(row).to_be_visible()
    expect(row.locator(".doc-title .mono")).to_have_text(f"file:///docs/عربي-{tag}.txt")
    expect(row.locator(".doc-title .title")).to_have_text(f"عربي-{tag}.txt")
    expect(row.locator(".doc-title .mono")).to_have_attribute("title", encoded)
    expect(row.locator("td.chunks")).to_have_text("1", timeout=30_000)
    if _size(page) == "phone":
        after = row.locator("td.chunks").evaluate(
            "cell => getComputedStyle(cell, '::after').content"
        )
        assert after == '" chunk"', after
    # The Open / Delete cell is one of the row's cells: inside the row, its line the row's.
    top = row.locator("td.actions").evaluate("cell => getComputedStyle(cell).marginTop")
    assert top == "0px", top
    cell, line = row.locator("td.actions").bounding_box(), row.bounding_box()
    assert cell is not None and line is not None
    assert line["y"] - 1 <= cell["y"], (cell, line)
    assert cell["y"] + cell["height"] <= line["y"] + line["height"] + 1, (cell, line)
    if _size(page) == "desktop":
        assert abs(cell["y"] + cell["height"] - (line["y"] + line["height"])) <= 1, (cell, line)
    shot(page, artifacts, f"qa26-documents-{_size(page)}")


def test_a_focused_invalid_cron_field_is_below_the_top_bar(screen: Page) -> None:
    """On a phone the sticky top bar (118 px) covered the field the form focused."""
    page = screen
    page.goto("/#/crons")
    expect(page.locator("#cron-agent option[value='workflows/echo']")).to_be_attached()
    page.select_option("#cron-agent", "workflows/echo")
    page.fill("#cron-schedule", "not a schedule")
    # From the bottom of the page: the refused field is above, the browser scrolls up to it.
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    page.locator("#cron-create").click()
    field = page.locator("#cron-schedule")
    expect(field).to_be_focused()
    expect(page.locator("#cron-schedule-error .notice")).to_be_visible()
    page.wait_for_timeout(200)
    bar = page.locator(".topbar").bounding_box()
    box = field.bounding_box()
    assert bar is not None and box is not None
    assert box["y"] >= bar["y"] + bar["height"], (box, bar)


def test_event_rows_on_a_phone_show_time_and_subject(
    screen: Page, mesh: Mesh, artifacts: Path
) -> None:
    page = screen
    page.goto("/#/events")
    page.fill("#ev-types", "run.*")
    page.locator("#events-form button[type=submit]").click()
    expect(page.locator("#feed")).to_contain_text("Waiting for events…")
    run = mesh.post(
        "/v1/runs",
        {
            "run": {"workflow": "workflows/echo", "input": {"message": "row"}},
            "requestId": str(uuid.uuid4()),
        },
    )["run"]
    row = page.locator(".feed-row", has_text=str(run["name"])).first
    expect(row).to_be_visible()
    summary = row.locator("summary > span")
    expect(summary.nth(1)).to_be_visible()  # the time
    expect(summary.nth(3)).to_be_visible()  # the subject
    expect(summary.nth(3)).to_have_text(str(run["name"]))
    shot(page, artifacts, f"qa26-events-{_size(page)}")


def test_thread_previews_are_three_lines_at_most_beside_last_active(
    screen: Page, mesh: Mesh, artifacts: Path
) -> None:
    page = screen
    message = "A long first message " + " ".join(f"word{i}" for i in range(120))
    run = mesh.post(
        "/v1/runs",
        {
            "run": {"workflow": "workflows/echo", "input": {"message": message}},
            "requestId": str(uuid.uuid4()),
        },
    )["run"]
    _wait_status(mesh, run["name"], "RUN_STATUS_COMPLETED")
    page.goto("/#/threads")
    row = page.locator(f'#threads-table tr[data-thread="{run["thread"]}"]')
    expect(row).to_be_visible()
    link = row.locator("td.preview a")
    height, line = link.evaluate(
        "a => [a.getBoundingClientRect().height, parseFloat(getComputedStyle(a).lineHeight)]"
    )
    assert height <= 3 * line + 1, f"{height} px for lines of {line} px"
    expect(page.locator("#threads-table th", has_text="Last active")).to_be_visible()
    expect(row.locator("td").nth(3)).to_be_visible()
    _fits(page, "threads")
    shot(page, artifacts, f"qa26-threads-{_size(page)}")


def test_a_refused_event_filter_says_only_that(screen: Page) -> None:
    """It said "The feed stopped…" above "Waiting for events…" and announced "Filter applied"."""
    page = screen
    page.goto("/#/events")
    page.fill("#ev-types", "a..b")
    page.locator("#events-form button[type=submit]").click()
    expect(page.locator(".notice.error")).to_contain_text("The feed stopped")
    expect(page.locator("#feed")).not_to_contain_text("Waiting for events")
    expect(page.locator("#feed")).to_contain_text("Not following any events")
    page.wait_for_timeout(300)
    assert "Filter applied" not in (page.locator("#announcer").text_content() or "")
    page.fill("#ev-types", "")
    page.locator("#events-form button[type=submit]").click()
    expect(page.locator("#announcer")).to_have_text("Filter applied")
