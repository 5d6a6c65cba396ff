"""The Threads screen's State, History and Edit state (LangGraph Studio's state panel), as a user
sees them at 1280×800 and 390×844: after a run the panel shows the run's values; the history
lists the checkpoints newest first and a row opens its state; an edit then a continued run sees
the edited values; an edit while a run is active shows the service's refusal; the page reads a
thread's runs before its state."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from dashboard_helpers import Mesh
from dashboard_pages import open_signed_in, shot
from playwright.sync_api import Browser, Page, Route, expect
from test_dashboard_features import DESKTOP, PHONE, _checked_page, _fits, _run, _wait_run

pytestmark = pytest.mark.slow

SIZES = {"desktop": DESKTOP, "phone": PHONE}


def _thread_id(run: dict[str, object]) -> str:
    return str(run["thread"]).split("/")[-1]


def _history(mesh: Mesh, thread_id: str) -> list[dict[str, object]]:
    states: list[dict[str, object]] = mesh.get(f"/v1/threads/{thread_id}/history?pageSize=10")[
        "states"
    ]
    return states


def _scroll_to(page: Page, selector: str) -> None:
    """Scroll so the element's top is at the top of the screen (for the screenshot)."""
    page.locator(selector).evaluate("(el) => el.scrollIntoView({block: 'start'})")


def _no_stray_text(page: Page) -> None:
    """The state's parts are elements: no bare text (a "null" for a part left out) between them."""
    stray = page.locator("#state-body").evaluate(
        "(el) => [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.data)"
    )
    assert not stray, stray


def _open_thread(page: Page, thread_id: str) -> None:
    page.goto(f"/#/threads/{thread_id}")
    expect(page.locator("#thread-state #state-checkpoint")).not_to_be_empty()


@pytest.mark.parametrize("size", SIZES)
def test_after_a_run_the_panel_shows_its_state_and_history_opens_a_checkpoint(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    word = f"zebra-{uuid.uuid4().hex[:6]}"
    run = _run(
        mesh, "chat", input={"message": f"what do you know of the {word}", "model": "offline:echo"}
    )
    _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    thread_id = _thread_id(run)
    latest = mesh.get(f"/v1/threads/{thread_id}/state")["state"]
    with _checked_page(browser, mesh, SIZES[size]) as page:
        _open_thread(page, thread_id)
        # The latest checkpoint: the run's messages as a conversation, and its details.
        messages = page.locator("#state-messages li")
        expect(messages).to_have_count(2)
        expect(messages.nth(0)).to_have_attribute("data-role", "user")
        expect(messages.nth(0).locator(".text")).to_have_text(f"what do you know of the {word}")
        expect(messages.nth(1).locator(".text")).to_have_text(f"what do you know of the {word}")
        expect(page.locator("#state-next")).to_have_text("nothing: the graph ended")
        expect(page.locator("#state-checkpoint")).to_have_text(latest["checkpoint"])
        expect(page.locator("#state-run")).to_have_text(str(run["name"]).split("/")[-1])
        expect(page.locator("#state-step")).to_have_text(f"{latest['step']} (node)")
        assert json.loads(page.locator("#state-values").inner_text()) == latest["values"]
        # The history: every checkpoint, newest first, as the API lists them.
        history = _history(mesh, thread_id)
        rows = page.locator("#state-history .history-row")
        expect(rows).to_have_count(len(history))
        shown = [rows.nth(i).get_attribute("data-checkpoint") for i in range(len(history))]
        assert shown == [state["checkpoint"] for state in history]
        steps = [int(rows.nth(i).get_attribute("data-step") or 0) for i in range(len(history))]
        assert steps == sorted(steps, reverse=True), steps
        expect(rows.first).to_have_attribute("aria-current", "true")
        expect(rows.first).to_contain_text("respond → end")
        _fits(page, "thread state")
        _scroll_to(page, "#thread-state")
        _no_stray_text(page)
        shot(page, artifacts, f"50-thread-state-{size}")
        # A row opens that checkpoint's state: the first one, before any node ran.
        oldest = history[-1]
        rows.last.click()
        expect(page.locator("#state-title")).to_have_text(f"State at step {oldest['step']}")
        expect(page.locator("#state-checkpoint")).to_have_text(str(oldest["checkpoint"]))
        expect(page.locator("#state-next")).to_have_text(", ".join(oldest["next"]))
        expect(page.locator("#state-step")).to_contain_text("(input)")
        expect(rows.last).to_have_attribute("aria-current", "true")
        assert json.loads(page.locator("#state-values").inner_text()) == oldest["values"]
        # An empty state (no message yet) reads as its values, nothing else.
        expect(page.locator("#state-messages")).to_have_count(0)
        _no_stray_text(page)
        _fits(page, "a checkpoint from the history")
        shot(page, artifacts, f"51-thread-checkpoint-{size}")
        page.click("#state-latest")
        expect(page.locator("#state-title")).to_have_text("State")
        expect(page.locator("#state-checkpoint")).to_have_text(latest["checkpoint"])


def test_history_pages_on_with_older(browser: Browser, mesh: Mesh) -> None:
    # Four chat turns in one thread write more checkpoints than a page (10) holds.
    first = _run(mesh, "chat", input={"message": "turn 0", "model": "offline:echo"})
    _wait_run(mesh, first["name"], "RUN_STATUS_COMPLETED")
    for turn in range(1, 4):
        run = _run(
            mesh,
            "chat",
            input={"message": f"turn {turn}", "model": "offline:echo"},
            thread=first["thread"],
        )
        _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    thread_id = _thread_id(first)
    every = mesh.get(f"/v1/threads/{thread_id}/history?pageSize=1000")["states"]
    assert len(every) > 10
    with _checked_page(browser, mesh, DESKTOP) as page:
        _open_thread(page, thread_id)
        rows = page.locator("#state-history .history-row")
        expect(rows).to_have_count(10)
        page.click("#history-older")
        expect(rows).to_have_count(min(len(every), 20))
        while page.locator("#history-older").is_visible():
            count = rows.count()
            page.click("#history-older")
            expect(rows).not_to_have_count(count)
        shown = [rows.nth(i).get_attribute("data-checkpoint") for i in range(rows.count())]
        assert shown == [state["checkpoint"] for state in every]


def _thread_runs_url(url: str) -> bool:
    """The thread page's list of the thread's runs (not the inbox's of paused runs)."""
    parts = urlparse(url)
    return parts.path == "/v1/runs" and "thread" in "".join(parse_qs(parts.query).get("filter", []))


def _state_url(url: str) -> bool:
    return bool(re.fullmatch(r"/v1/threads/[^/]+/state", urlparse(url).path))


def test_the_thread_page_reads_its_runs_before_its_state(browser: Browser, mesh: Mesh) -> None:
    """A run's end is stored only after its last checkpoint: with the runs read first, the state
    read next has every checkpoint of a run shown as ended. Read at once, a run that ended
    between the two reads showed COMPLETED beside the state from before its last step (the
    TUI's thread screen had the race, 5a7e9cf). The order is seen by holding the runs' answer:
    the state is asked for only once it is given."""
    run = _run(mesh, "chat", input={"message": "in order", "model": "offline:echo"})
    _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    seen: list[str] = []

    def runs(route: Route) -> None:
        seen.append("runs asked")
        answer = route.fetch()
        seen.append("runs answered")
        route.fulfill(response=answer)

    def state(route: Route) -> None:
        seen.append("state asked")
        route.continue_()

    with _checked_page(browser, mesh, DESKTOP) as page:
        page.route(_thread_runs_url, runs)
        page.route(_state_url, state)
        _open_thread(page, _thread_id(run))
        expect(page.locator("#thread-conversation .turn.reply .badge")).to_have_text("Completed")
        expect(page.locator("#state-next")).to_have_text("nothing: the graph ended")
    assert seen[:3] == ["runs asked", "runs answered", "state asked"], seen


def test_an_address_that_names_no_thread_says_so_and_offers_no_message_form(
    browser: Browser, mesh: Mesh
) -> None:
    """`#/threads/<UPPER-CASE UUID>` (an id pasted as another tool spelt it): the service's
    refusal is shown, and no "Send a message" form to a thread that is not one (QA s19)."""
    # Its 400s are logged: not a checked page.
    context, page, _ = open_signed_in(browser, mesh, DESKTOP)
    try:
        page.goto(f"/#/threads/{str(uuid.uuid4()).upper()}")
        expect(page.locator("#thread-error")).to_contain_text("canonical form")
        expect(page.locator("#thread-continue")).to_be_hidden()
    finally:
        context.close()


def test_an_edit_then_a_continued_run_sees_the_edited_values(
    browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    run = _run(mesh, "chat", input={"message": "first words", "model": "offline:transcript"})
    _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    thread_id = _thread_id(run)
    before = mesh.get(f"/v1/threads/{thread_id}/state")["state"]["checkpoint"]
    note = f"remember the zebra {uuid.uuid4().hex[:6]}"
    with _checked_page(browser, mesh, DESKTOP) as page:
        _open_thread(page, thread_id)
        # Bad JSON is caught in the page, before any request.
        page.fill("#edit-values", "{oops")
        page.click("#edit-save")
        expect(page.locator("#edit-error")).to_contain_text("The values are not valid JSON")
        # The workflow's nodes are offered as as_node.
        expect(page.locator("#edit-as-node option")).to_have_text(
            ["the node that wrote last", "retrieve", "respond"]
        )
        page.fill("#edit-values", json.dumps({"messages": [{"role": "user", "content": note}]}))
        page.select_option("#edit-as-node", "respond")
        page.click("#edit-save")
        # The panel shows the new checkpoint: an edit, with the message appended.
        expect(page.locator("#state-run")).to_have_text("a state edit")
        expect(page.locator("#state-checkpoint")).not_to_have_text(before)
        expect(page.locator("#state-messages li").last.locator(".text")).to_have_text(note)
        expect(page.locator("#edit-error")).to_be_empty()
        saved = mesh.get(f"/v1/threads/{thread_id}/state")["state"]
        expect(page.locator("#state-checkpoint")).to_have_text(saved["checkpoint"])
        assert saved["metadata"]["source"] == "update"
        first_row = page.locator("#state-history .history-row").first
        expect(first_row).to_have_attribute("data-checkpoint", saved["checkpoint"])
        expect(first_row.locator(".history-source")).to_have_text("edit")
        _scroll_to(page, "#thread-state")
        shot(page, artifacts, "52-thread-edited-desktop")
        # The next run of the thread continues from the edit: the model is sent the note.
        page.fill("#thread-message", "what did I say")
        page.click("#thread-send")
        page.wait_for_url(re.compile(r".*#/runs/[0-9a-f-]+$"))
        continued = f"runs/{page.url.rsplit('/', 1)[-1]}"
        done = _wait_run(mesh, continued, "RUN_STATUS_COMPLETED")
        assert f"user: {note}" in json.dumps(done["output"]), done["output"]
        _open_thread(page, thread_id)
        expect(page.locator("#state-run")).to_have_text(continued.split("/")[-1])
        texts = page.locator("#state-messages li .text")
        expect(texts.last).to_contain_text(f"user: {note}\nuser: what did I say")


@pytest.mark.parametrize("size", SIZES)
def test_an_edit_as_an_earlier_node_then_continue_runs_the_next_node(
    browser: Browser, mesh: Mesh, artifacts: Path, size: str
) -> None:
    """The two ways on from a thread are named by what they do: "Send a message" (a new run
    from the graph's start) and "Continue from here (no input)" (the checkpoint's next nodes);
    the run continued without input reads so in the conversation, not as an empty message."""
    run = _run(mesh, "chat", input={"message": "first words", "model": "offline:transcript"})
    _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    thread_id = _thread_id(run)
    note = f"the secret word is papaya-{uuid.uuid4().hex[:6]}"
    with _checked_page(browser, mesh, SIZES[size]) as page:
        _open_thread(page, thread_id)
        expect(page.locator("#continue-title")).to_have_text("Send a message")
        expect(page.locator("#thread-continue .hint")).to_contain_text(
            "The graph starts again from its start, on the thread's latest state"
        )
        # The graph ended: nothing to continue.
        expect(page.locator("#state-continue")).to_be_hidden()
        page.fill("#edit-values", json.dumps({"messages": [{"role": "user", "content": note}]}))
        page.select_option("#edit-as-node", "retrieve")
        page.click("#edit-save")
        expect(page.locator("#state-next")).to_have_text("respond")
        expect(page.locator("#state-continue")).to_be_visible()
        expect(page.locator("#state-continue")).to_have_text("Continue from here (no input)")
        _scroll_to(page, "#thread-state")
        _fits(page, f"thread state with Continue from here, {size}")
        shot(page, artifacts, f"53-thread-continue-{size}")
        page.click("#state-continue")
        page.wait_for_url(re.compile(r".*#/runs/[0-9a-f-]+$"))
        continued = f"runs/{page.url.rsplit('/', 1)[-1]}"
        done = _wait_run(mesh, continued, "RUN_STATUS_COMPLETED")
        # respond ran on the edited state, with no new message: the model saw the note last.
        assert json.dumps(done["output"]).endswith(f'user: {note}"}}'), done["output"]
        _open_thread(page, thread_id)
        expect(page.locator("#state-next")).to_have_text("nothing: the graph ended")
        expect(page.locator("#state-continue")).to_be_hidden()
        # The continued run's turn says it had no input; the first run's is its message.
        users = page.locator("#thread-conversation .turn.user")
        expect(users).to_have_count(2)
        expect(users.first.locator(".who")).to_have_text("Message")
        expect(users.first.locator(".text")).to_have_text("first words")
        expect(users.last).to_have_attribute("data-run", continued)
        expect(users.last.locator(".who")).to_have_text("Continued")
        expect(users.last.locator(".text")).to_contain_text("continued (no input)")
        _scroll_to(page, "#thread-conversation")
        _fits(page, f"thread conversation with a continued run, {size}")
        shot(page, artifacts, f"54-thread-continued-{size}")


@pytest.mark.parametrize("size", SIZES)
def test_an_edit_while_a_run_is_active_shows_the_refusal(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    run = _run(mesh, "approval", input={"message": "a draft", "question": "Edit me?"})
    _wait_run(mesh, run["name"], "RUN_STATUS_PAUSED", timeout=120)
    thread_id = _thread_id(run)
    try:
        before = mesh.get(f"/v1/threads/{thread_id}/state")["state"]
        # What the service answers such an edit: the page must show this google.rpc.Status.
        refused = httpx.post(
            f"{mesh.url}/v1/threads/{thread_id}/state",
            json={"values": {"result": "edited"}},
            headers={"Authorization": f"Bearer {mesh.token}"},
        )
        assert refused.status_code == 400 and refused.json()["code"] == 9, refused.text
        with _checked_page(browser, mesh, SIZES[size]) as page:
            _open_thread(page, thread_id)
            # In the conversation the paused run's turn is its question and where to answer it.
            waiting = page.locator("#thread-conversation .turn.reply .waiting")
            expect(waiting).to_contain_text("Waiting for an answer: Edit me?")
            answer = waiting.get_by_role("link", name="Answer it on the run's page →")
            expect(answer).to_have_attribute("href", f"#/runs/{str(run['name']).split('/')[-1]}")
            # The paused run's state: its question waits, approve runs next.
            expect(page.locator("#state-questions li")).to_have_text(["Edit me?"])
            expect(page.locator("#state-next")).to_have_text("approve")
            expect(page.locator("#edit-active")).to_have_text(
                "A run of this thread is paused: the state can change only once it has ended."
            )
            page.fill("#edit-values", json.dumps({"result": "edited"}))
            page.click("#edit-save")
            expect(page.locator("#edit-error")).to_have_text(refused.json()["message"])
            expect(page.locator("#edit-error [role=alert]")).to_be_visible()
            expect(page.locator("#state-checkpoint")).to_have_text(before["checkpoint"])
            _scroll_to(page, "#thread-edit")
            _fits(page, "refused edit")
            shot(page, artifacts, f"53-thread-edit-refused-{size}")
        assert (
            mesh.get(f"/v1/threads/{thread_id}/state")["state"]["checkpoint"]
            == before["checkpoint"]
        )
    finally:
        mesh.post(f"/v1/{run['name']}:cancel", {"reason": "test over"})


def test_the_state_panel_is_readable_in_the_dark_theme(
    browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    run = _run(mesh, "approval", input={"message": "a dark draft", "question": "Dark?"})
    _wait_run(mesh, run["name"], "RUN_STATUS_PAUSED", timeout=120)
    try:
        context = browser.new_context(
            viewport=DESKTOP,  # type: ignore[arg-type]
            base_url=mesh.url,
            color_scheme="dark",
        )
        try:
            page = context.new_page()
            page.goto(f"/?token={mesh.token}#/status")
            _open_thread(page, _thread_id(run))
            expect(page.locator("#state-questions li")).to_have_text(["Dark?"])
            page.locator("#state-history .history-row").nth(1).click()
            expect(page.locator("#state-latest")).to_be_visible()
            page.fill("#edit-values", json.dumps({"result": "x"}))
            page.click("#edit-save")
            expect(page.locator("#edit-error [role=alert]")).to_be_visible()
            _scroll_to(page, "#thread-state")
            shot(page, artifacts, "54-thread-state-dark")
            _scroll_to(page, "#thread-edit")
            shot(page, artifacts, "55-thread-edit-dark")
        finally:
            context.close()
    finally:
        mesh.post(f"/v1/{run['name']}:cancel", {"reason": "test over"})


def test_save_on_a_picked_older_checkpoint_branches_from_it(
    browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    """QA session 14: after opening an older checkpoint, Save wrote on the latest one; the CLI and
    HTTP could branch from an old checkpoint (`checkpoint` of UpdateThreadState), the page not."""
    run = _run(mesh, "chat", input={"message": "first words", "model": "offline:transcript"})
    _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    thread_id = _thread_id(run)
    history = _history(mesh, thread_id)
    picked = history[1]  # the checkpoint before the latest
    note = f"a branch note {uuid.uuid4().hex[:6]}"
    with _checked_page(browser, mesh, DESKTOP) as page:
        _open_thread(page, thread_id)
        expect(page.locator("#edit-save")).to_have_text("Save state")
        page.locator(
            f'#state-history .history-row[data-checkpoint="{picked["checkpoint"]}"]'
        ).click()
        step = picked.get("step", 0)
        expect(page.locator("#edit-save")).to_have_text(f"Save as a branch from step {step}")
        expect(page.locator("#edit-where")).to_contain_text("a branch from it")
        page.fill("#edit-values", json.dumps({"messages": [{"role": "user", "content": note}]}))
        page.select_option("#edit-as-node", "respond")
        _scroll_to(page, "#thread-edit")
        shot(page, artifacts, "56-thread-branch-save-desktop")
        page.click("#edit-save")
        expect(page.locator("#state-run")).to_have_text("a state edit")
        saved = mesh.get(f"/v1/threads/{thread_id}/state")["state"]
        expect(page.locator("#state-checkpoint")).to_have_text(saved["checkpoint"])
        # Written on the picked checkpoint, not on the latest one.
        assert saved["parentCheckpoint"] == picked["checkpoint"], saved
        expect(page.locator("#edit-save")).to_have_text("Save state")
        expect(page.locator("#state-messages li").last.locator(".text")).to_have_text(note)
