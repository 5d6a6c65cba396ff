"""The dashboard as LangGraph Studio / Temporal UI users expect it: every screen on a phone,
steps with a timeline and a graph, threads to read and continue, the runs list filtered from the
URL, rerun and fork, the inbox of paused runs — and the defects found when a new user tried it
(vector search, agent form, rejected plans, the agent id pattern, indexing progress)."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from dashboard_helpers import Mesh
from dashboard_pages import expect_output, expect_status, open_signed_in, shot, start_run
from playwright.sync_api import Browser, Page, expect

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"


@contextmanager
def _checked_page(browser: Browser, mesh: Mesh, viewport: dict[str, int]) -> Iterator[Page]:
    """A page that fails the test if it logged an error or threw."""
    context, page, problems = open_signed_in(browser, mesh, viewport)
    try:
        yield page
    finally:
        context.close()
    assert not problems, problems


@pytest.fixture
def desk(browser: Browser, mesh: Mesh) -> Iterator[Page]:
    with _checked_page(browser, mesh, DESKTOP) as page:
        yield page


@pytest.fixture(params=["desktop", "phone"])
def screen(request: pytest.FixtureRequest, browser: Browser, mesh: Mesh) -> Iterator[Page]:
    """The same test at 1280×800 and at 390×844, where the page must not scroll sideways."""
    with _checked_page(browser, mesh, DESKTOP if request.param == "desktop" else PHONE) as page:
        yield page
        _fits(page, f"{request.node.name} at the end")


def _run(mesh: Mesh, workflow: str, **run: object) -> dict[str, object]:
    body = {"run": {"workflow": f"workflows/{workflow}", **run}, "requestId": str(uuid.uuid4())}
    created: dict[str, object] = mesh.post("/v1/runs", body)["run"]
    return created


def _wait_run(mesh: Mesh, name: object, *statuses: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, object] = mesh.get(f"/v1/{name}")["run"]
        if run["status"] in statuses:
            return run
        assert time.monotonic() < deadline, f"{name} stayed {run['status']}"
        time.sleep(0.2)


def _width(page: Page) -> int:
    size = page.viewport_size
    assert size is not None
    return size["width"]


def _fits(page: Page, what: str) -> None:
    assert page.evaluate(NO_SIDEWAYS_SCROLL), (
        f"{what}: the page is {page.evaluate('document.documentElement.scrollWidth')} px wide"
    )


# -- every screen on a phone and on a desktop -----------------------------------------------


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_every_screen_fits_without_sideways_scroll(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    # A run whose output is one long unbroken word: its result JSON must wrap, not widen the page.
    long_word = "x" * 600
    run = _run(mesh, "echo", input={"message": f"fits {long_word}"})
    _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    run_id = str(run["name"]).split("/")[-1]
    thread_id = str(run["thread"]).split("/")[-1]
    # A document with a long name, so the documents table has a row to fit.
    content = base64.b64encode(b"# Fit\n\nA short document to list.").decode()
    title = f"a-rather-long-document-name-{'y' * 60}-{size}.md"
    mesh.post("/v1/documents", {"source": {"title": title}, "content": content})
    with _checked_page(browser, mesh, PHONE if size == "phone" else DESKTOP) as page:
        screens = {
            "status": ("#/status", "[data-service=agents]"),
            "events": ("#/events", "#ev-types"),
            "runs": ("#/runs", "#runs-table tbody tr[data-run]"),
            "run": (f"#/runs/{run_id}", "#run-steps .step"),
            "threads": ("#/threads", "#threads-table tbody tr[data-thread]"),
            "thread": (f"#/threads/{thread_id}", "#thread-conversation .turn"),
            "documents": ("#/documents", f'#docs-table tr:has-text("{title}")'),
        }
        for name, (path, ready) in screens.items():
            page.goto(f"/{path}")
            page.wait_for_selector(ready)
            if name == "run":
                page.click("#run-output-json summary")
                expect(page.locator("#run-output-json pre")).to_contain_text(long_word)
                page.locator("#run-steps .step summary").first.click()
            _fits(page, f"{name} at {size}")
            page.screenshot(path=str(artifacts / f"fit-{size}-{name}.png"), full_page=True)
        # The Events hint says what docs/events.md says about `*`.
        page.goto("/#/events")
        expect(page.locator("#ev-types-hint")).to_contain_text("a trailing * or > matches the rest")


# -- defects --------------------------------------------------------------------------------


def test_new_agent_keeps_the_run_form_and_is_selected(desk: Page, artifacts: Path) -> None:
    page = desk
    page.goto("/#/runs")
    page.wait_for_selector('#run-target option[value="workflows/echo"]', state="attached")
    page.select_option("#run-target", "workflows/echo")
    page.fill('[data-field="message"]', "a message typed before the agent was made")
    page.click("#agent-card summary")
    # The id pattern is a valid regex for Chrome (`v` flag): it really validates.
    page.fill("#agent-id", "Bad_Id")
    assert page.eval_on_selector("#agent-id", "el => el.validity.patternMismatch")
    agent_id = f"helper-{uuid.uuid4().hex[:6]}"
    page.fill("#agent-id", agent_id)
    assert not page.eval_on_selector("#agent-id", "el => el.validity.patternMismatch")
    page.fill("#agent-name", "Helper")
    page.fill("#agent-model", "offline:say:Helper here")
    page.click("#new-agent button[type=submit]")
    expect(page.locator("#agent-message .notice")).to_contain_text(f"agents/{agent_id}")
    expect(page.locator("#run-target")).to_have_value(f"agents/{agent_id}")
    expect(page.locator('[data-field="message"]')).to_have_value(
        "a message typed before the agent was made"
    )
    shot(page, artifacts, "20-agent-created")
    page.click("#run-start")
    expect_status(page, "RUN_STATUS_COMPLETED")
    expect_output(page, "Helper here")


def test_rejected_plan_reads_rejected_and_skips_planning(desk: Page, artifacts: Path) -> None:
    page = desk
    start_run(page, "workflows/plan", {"message": "Rewrite it in COBOL", "model": "offline:echo"})
    page.get_by_role("group", name="Choices").get_by_role("button", name="reject").click()
    expect(page.locator("#run-status [data-outcome=rejected]")).to_have_text(
        "Rejected", timeout=60_000
    )
    expect(page.locator("#run-rejected")).to_be_visible()
    expect(page.locator("#run-nodes [data-node=planning]")).to_have_attribute(
        "data-state", "skipped"
    )
    expect(page.locator("#run-graph [data-node=planning]")).to_have_attribute(
        "data-state", "skipped"
    )
    shot(page, artifacts, "21-plan-rejected")
    # The runs list says so too.
    page.goto("/#/runs?status=COMPLETED")
    expect(page.locator("#runs-table [data-outcome=rejected]").first).to_be_visible()


ZEBRAS = "\n\n".join(
    [
        "# Zebra migration",
        "Every year the zebras of the Serengeti walk north to the Masai Mara, following the rains "
        "and the fresh grass. The herds cross the Mara river, where crocodiles wait for them.",
        *(
            f"## Note {i}\n\nField note {i}: the herd grazed near waterhole {i} in the dry season."
            # More chunks than the indexer embeds in one batch (4 x EMBEDDING_BATCH_SIZE).
            for i in range(40)
        ),
    ]
)


def test_upload_shows_indexing_progress_then_vector_search_finds_a_plain_question(
    desk: Page, mesh: Mesh, artifacts: Path
) -> None:
    page = desk
    page.goto("/#/documents")
    expect(page.locator("#docs-table")).to_be_visible()
    # Every text the upload's state shows, as it changes.
    page.evaluate(
        """() => {
          window.__states = [];
          // Each text node written into a state (events may arrive several per task).
          new MutationObserver((records) => {
            for (const record of records) {
              if (!record.target.classList || !record.target.classList.contains('state')) continue;
              for (const node of record.addedNodes) window.__states.push(node.data);
            }
          }).observe(document.getElementById('uploads'), { subtree: true, childList: true });
        }"""
    )
    notes = mesh.root / f"zebra-notes-{uuid.uuid4().hex[:6]}.md"
    notes.write_text(ZEBRAS)
    with page.expect_file_chooser() as chooser:
        page.click("#choose-files")
    chooser.value.set_files(str(notes))
    upload = page.locator(f'#uploads li[data-file="{notes.name}"]')
    expect(upload).to_have_attribute("data-state", "done", timeout=120_000)
    states = page.evaluate("window.__states")
    progress = [s for s in states if re.fullmatch(r"Indexing \d+/\d+", s)]
    assert progress, f"no indexing progress shown: {states}"
    done, total = map(int, progress[0].removeprefix("Indexing ").split("/"))
    assert 0 < done < total
    assert states[-1] == f"{total} chunks"
    # A plain question, in the vector mode, with the page's defaults: passages come back.
    page.select_option("#search-mode", "SEARCH_MODE_VECTOR")
    page.fill("#search-query", "where do the zebras go every year")
    page.click("#search-form button[type=submit]")
    expect(page.locator("#search-results .passage").first).to_be_visible(timeout=60_000)
    expect(page.locator("#search-results")).to_contain_text("Serengeti")
    shot(page, artifacts, "22-vector-search")


# -- features -------------------------------------------------------------------------------


def test_steps_timeline_graph_then_fork_from_a_step(screen: Page, artifacts: Path) -> None:
    page = screen
    start_run(page, "workflows/approval", {"message": "Plan a picnic", "question": "Go?"})
    expect_status(page, "RUN_STATUS_PAUSED")
    expect(page.locator("#run-graph [data-node=approve]")).to_have_attribute(
        "data-state", "waiting"
    )
    expect(page.locator("#run-steps .step[data-node=approve]")).to_have_attribute(
        "data-state", "waiting"
    )
    page.get_by_role("group", name="Choices").get_by_role("button", name="yes").click()
    expect_status(page, "RUN_STATUS_COMPLETED")
    steps = page.locator("#run-steps .step")
    expect(steps).to_have_count(3)
    assert steps.evaluate_all("els => els.map(e => e.dataset.node)") == [
        "draft",
        "approve",
        "finish",
    ]
    expect(page.locator("#run-steps .step[data-state=done]")).to_have_count(3)
    expect(page.locator("#steps-totals")).to_contain_text("3 steps")
    # draft streamed "Plan a picnic " as three tokens.
    expect(page.locator("#run-steps .step[data-node=draft] .step-tokens")).to_have_text("3 tok")
    for node in ("draft", "approve", "finish"):
        expect(page.locator(f"#run-graph [data-node={node}]")).to_have_attribute(
            "data-state", "done"
        )
    expect(page.locator("#run-graph path.edge")).to_have_count(4)
    shot(page, artifacts, f"23-steps-and-graph-{_width(page)}")

    finish = page.locator("#run-steps .step[data-node=finish]")
    finish.locator("summary").click()
    expect(finish.locator(".step-body")).to_contain_text('"answer": "yes"')
    finish.locator(".fork-values").fill('{"answer": "a forked answer"}')
    source = page.url
    finish.locator(".fork-button").click()
    page.wait_for_url(lambda url: url != source and "#/runs/" in url)
    expect_status(page, "RUN_STATUS_COMPLETED")
    # The fork ran `finish` only, on the edited state.
    expect(page.locator("#run-output-json pre")).to_contain_text("answer was a forked answer")
    expect(page.locator("#run-steps .step")).to_have_count(1)
    expect(page.locator("#run-steps .step")).to_have_attribute("data-node", "finish")
    shot(page, artifacts, f"24-forked-run-{_width(page)}")


def test_rerun_starts_the_same_input_again(desk: Page, mesh: Mesh) -> None:
    page = desk
    word = f"again{uuid.uuid4().hex[:6]}"
    run = _run(mesh, "echo", input={"message": word})
    _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    page.goto(f"/#/runs/{str(run['name']).split('/')[-1]}")
    expect_status(page, "RUN_STATUS_COMPLETED")
    page.click("#run-rerun")
    page.wait_for_url(lambda url: str(run["name"]).split("/")[-1] not in url)
    expect_status(page, "RUN_STATUS_COMPLETED")
    expect_output(page, word)


def test_threads_list_opens_a_conversation_that_continues(screen: Page, artifacts: Path) -> None:
    page = screen
    first = f"first question {uuid.uuid4().hex[:6]}"
    start_run(page, "workflows/chat", {"message": first, "model": "offline:echo"})
    expect_status(page, "RUN_STATUS_COMPLETED")
    # The run header links its whole thread, and "New run on this thread" opens its message form.
    thread_link = page.locator("#run-thread-link")
    thread_id = thread_link.inner_text()
    assert re.fullmatch(r"[0-9a-f-]{36}", thread_id), thread_id
    expect(page.locator("#run-continue")).to_have_text("New run on this thread")
    page.click("#run-continue")
    page.wait_for_url(re.compile(f"#/threads/{thread_id}$"))
    expect(page.locator("#continue-title")).to_have_text("Send a message")
    turns = page.locator("#thread-conversation .turn")
    expect(turns).to_have_count(2)
    expect(turns.first).to_contain_text(first)
    page.fill("#thread-message", "and a second one")
    page.click("#thread-send")
    page.wait_for_url(re.compile(r"#/runs/[0-9a-f-]+$"))
    expect_status(page, "RUN_STATUS_COMPLETED")
    expect(page.locator("#run-thread-link")).to_have_text(thread_id)
    page.goto(f"/#/threads/{thread_id}")
    expect(turns).to_have_count(4)
    expect(turns.nth(2)).to_contain_text("and a second one")
    shot(page, artifacts, f"25-thread-{_width(page)}")
    # The list: most recently active first, with the first message and the run count.
    page.goto("/#/threads")
    row = page.locator("#threads-table tbody tr").first
    expect(row).to_contain_text(first)
    expect(row.locator("td.num")).to_have_text("2")
    # The start form takes a bare thread id (a link can carry it).
    page.goto(f"/#/runs?thread={thread_id}&new=workflows/chat")
    expect(page.locator("#run-thread")).to_have_value(f"threads/{thread_id}")
    expect(page.locator("#run-target")).to_have_value("workflows/chat")


def test_runs_filters_live_in_the_url(desk: Page, mesh: Mesh, artifacts: Path) -> None:
    page = desk
    word = f"filterme{uuid.uuid4().hex[:6]}"
    done = [_run(mesh, "echo", input={"message": f"{word} {i}"}) for i in range(2)]
    paused = _run(mesh, "approval", input={"message": word, "question": "Filter?"})
    for run in done:
        _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    _wait_run(mesh, paused["name"], "RUN_STATUS_PAUSED")
    page.goto(f"/#/runs?q={word}")
    rows = page.locator("#runs-table tbody tr[data-run]")
    expect(rows).to_have_count(3)
    page.get_by_role("group", name="Statuses").get_by_label("Paused").check()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-run", str(paused["name"]))
    page.wait_for_function("() => location.hash.includes('status=PAUSED')")
    shared = page.url
    # The same link in a fresh page shows the same list.
    page.goto("/#/status")
    page.goto(shared)
    expect(page.get_by_role("group", name="Statuses").get_by_label("Paused")).to_be_checked()
    expect(page.locator("#runs-q")).to_have_value(word)
    expect(rows).to_have_count(1)
    # Oldest first, and a filter expression of one's own.
    page.goto(f"/#/runs?q={word}&order=oldest")
    expect(rows).to_have_count(3)
    assert rows.first.get_attribute("data-run") == done[0]["name"]
    page.goto(f"/#/runs?q={word}&filter=workflow%20%3D%20%22approval%22")
    expect(rows).to_have_count(1)
    page.goto("/#/runs?filter=colour%20%3D%20red")
    expect(page.locator("#runs-table").locator("..").locator("..")).to_contain_text(
        "unknown field 'colour'"
    )
    shot(page, artifacts, "26-runs-filtered")
    mesh.post(f"/v1/{paused['name']}:cancel", {"reason": "test done"})


def test_inbox_shows_paused_runs_on_every_screen(desk: Page, mesh: Mesh, artifacts: Path) -> None:
    page = desk
    page.goto("/#/documents")
    # Read the count once the inbox has asked (runs left paused by other tests count too).
    expect(page.locator("#inbox")).to_have_attribute("data-count", re.compile(r"^\d+$"))
    before = int(page.locator("#inbox").get_attribute("data-count") or 0)
    paused = _run(mesh, "approval", input={"message": "inbox", "question": "Seen in the inbox?"})
    inbox = page.locator("#inbox")
    expect(inbox).to_have_attribute("data-count", str(before + 1), timeout=60_000)
    expect(inbox).to_be_visible()
    shot(page, artifacts, "27-inbox")
    inbox.click()
    if before == 0:
        page.wait_for_url(re.compile(f"#/runs/{str(paused['name']).split('/')[-1]}$"))
    else:
        expect(page.locator(f'#runs-table tr[data-run="{paused["name"]}"]')).to_be_visible()
    mesh.post(f"/v1/{paused['name']}:resume", {"answer": "yes"})
    expect(inbox).to_have_attribute("data-count", str(before), timeout=60_000)


def test_agents_are_listed_edited_and_deleted(desk: Page, mesh: Mesh) -> None:
    page = desk
    agent_id = f"editable-{uuid.uuid4().hex[:6]}"
    mesh.post(
        "/v1/agents",
        {"agentId": agent_id, "agent": {"displayName": "Editable", "model": "offline:say:Before"}},
    )
    page.goto("/#/runs")
    page.wait_for_selector(f'#run-target option[value="agents/{agent_id}"]', state="attached")
    page.click("#agents-card summary")
    row = page.locator(f'#agents-list li[data-agent="agents/{agent_id}"]')
    expect(row).to_contain_text("Editable · offline:say:Before")
    row.get_by_role("button", name="Edit Editable").click()
    row.locator(f"#edit-{agent_id}-model").fill("offline:say:After the edit")
    row.locator(f"#edit-{agent_id}-name").fill("Edited")
    row.get_by_role("button", name="Save").click()
    expect(row.locator(".notice")).to_have_text("Saved.")
    expect(row.locator(".agent-label")).to_have_text("Edited · offline:say:After the edit")
    assert mesh.get(f"/v1/agents/{agent_id}")["agent"]["model"] == "offline:say:After the edit"
    page.select_option("#run-target", f"agents/{agent_id}")
    page.fill('[data-field="message"]', "hi")
    page.click("#run-start")
    expect_status(page, "RUN_STATUS_COMPLETED")
    expect_output(page, "After the edit")

    page.goto("/#/runs")
    page.click("#agents-card summary")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete Edited").click()
    expect(row).to_have_count(0)
    expect(page.locator(f'#run-target option[value="agents/{agent_id}"]')).to_have_count(0)
    response = httpx.get(
        f"{mesh.url}/v1/agents/{agent_id}", headers={"Authorization": f"Bearer {mesh.token}"}
    )
    assert response.status_code == 404


def test_workers_and_queue_show_a_run_in_flight_with_its_worker_and_heartbeat(
    screen: Page, mesh: Mesh, artifacts: Path, tmp_path: Path
) -> None:
    page = screen
    release = tmp_path / "release"
    run = _run(mesh, "hold", input={"release": str(release)})
    run_id = str(run["name"]).split("/")[-1]
    try:
        page.goto("/#/status")
        page.click("#queue-link")
        page.wait_for_url(re.compile("#/queue$"))
        expect(page.locator("h1")).to_have_text("Workers and queue")
        row = page.locator(f'#queue-runs tr[data-run="{run_id}"]')
        expect(row).to_have_attribute("data-held", "true", timeout=60_000)
        expect(row).to_contain_text("hold")
        expect(row).to_contain_text(re.compile(r"\d+ ms ago|\d+\.\d+ s ago"))
        expect(page.locator("#queue-workers tr[data-healthy=true]")).not_to_have_count(0)
        expect(page.locator("[data-queue=in-flight] .queue-figure")).not_to_have_text("0")
        shot(page, artifacts, f"28-queue-{_width(page)}")
        _fits(page, "queue")
    finally:
        release.touch()
    _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    expect(page.locator(f'#queue-runs tr[data-run="{run_id}"]')).to_have_count(0)


def test_runs_sort_by_tokens_and_duration(screen: Page, mesh: Mesh, artifacts: Path) -> None:
    page = screen
    word = f"sortme{uuid.uuid4().hex[:6]}"
    runs = [_run(mesh, "echo", input={"message": " ".join([word] * n)}) for n in (2, 1, 4)]
    two, one, four = (str(r["name"]) for r in runs)
    for run in runs:
        _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    page.goto(f"/#/runs?q={word}")
    rows = page.locator("#runs-table tbody tr[data-run]")
    expect(rows).to_have_count(3)

    def expect_order(*names: str) -> None:
        for i, name in enumerate(names):
            expect(rows.nth(i)).to_have_attribute("data-run", name)

    if _width(page) > 600:
        tokens = page.locator("#runs-table th:has(button[data-sort=tokens])")
        tokens.locator("button").click()
        expect(tokens).to_have_attribute("aria-sort", "descending")
        expect_order(four, two, one)
        tokens.locator("button").click()
        expect(tokens).to_have_attribute("aria-sort", "ascending")
        expect_order(one, two, four)
        page.wait_for_function("() => location.hash.includes('order=fewest-tokens')")
        shot(page, artifacts, "29-runs-sorted-by-tokens")
    else:
        # The columns are hidden on a phone: the order menu sorts the same way.
        page.select_option("#runs-order", "most-tokens")
        expect_order(four, two, one)
        page.wait_for_function("() => location.hash.includes('order=most-tokens')")
    # A shared link keeps the order; by duration, every run is listed once.
    page.goto(f"/#/runs?q={word}&order=longest")
    expect(page.locator("#runs-order")).to_have_value("longest")
    expect(rows).to_have_count(3)
    listed = {rows.nth(i).get_attribute("data-run") for i in range(3)}
    assert listed == {one, two, four}


def test_steps_show_each_nodes_tokens_and_cost_and_the_runs_total(
    screen: Page, artifacts: Path
) -> None:
    # The mesh prices offline models at $1000 and $2000 per million input and output tokens.
    page = screen
    start_run(page, "workflows/chat", {"message": "what does it cost", "model": "offline:echo"})
    expect_status(page, "RUN_STATUS_COMPLETED")
    totals = page.locator("#steps-totals")
    expect(totals).to_contain_text(re.compile(r"\d+ tokens in, \d+ out · \$"))
    found = re.search(r"(\d+) tokens in, (\d+) out · \$([0-9.]+)", totals.inner_text())
    assert found is not None
    tokens_in, tokens_out, total = int(found[1]), int(found[2]), float(found[3])
    assert tokens_in > 0 and tokens_out > 0
    assert total == pytest.approx((tokens_in * 1000 + tokens_out * 2000) / 1e6, rel=0.05)
    if _width(page) > 600:
        step = page.locator("#run-steps .step:has(.step-cost:not(:empty))")
        expect(step).to_have_count(1)
        expect(step.locator(".step-tokens")).to_have_text(f"{tokens_in + tokens_out} tok")
        expect(step.locator(".step-cost")).to_have_text(f"${found[3]}")
    shot(page, artifacts, f"30-steps-cost-{_width(page)}")
