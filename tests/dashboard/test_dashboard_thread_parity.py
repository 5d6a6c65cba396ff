"""What the API offers on threads and runs, on the dashboard as LangGraph Studio has it (session
27 added it to the API only): a thread's metadata shown and edited in place (UpdateThread, a key
taken out removed), "Copy thread" opening the copy with the state and history, and "Delete run"
on an ended run's page, asked first (none on a run still going) — at 1280×800 and 390×844."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from dashboard_helpers import Mesh
from dashboard_pages import shot
from playwright.sync_api import Browser, Page, expect
from test_dashboard_features import DESKTOP, PHONE, _checked_page, _fits, _run, _wait_run
from test_dashboard_thread_state import _open_thread, _thread_id

pytestmark = pytest.mark.slow

SIZES = {"desktop": DESKTOP, "phone": PHONE}


def _status(mesh: Mesh, path: str) -> int:
    """The HTTP status of a GET (a 404 is an answer here, not an error)."""
    headers = {"Authorization": f"Bearer {mesh.token}"}
    return httpx.get(mesh.url + path, headers=headers, timeout=30).status_code


# The metadata line's JSON, keys in order, once it is `expected` (the service keeps its own key
# order).
SHOWN_METADATA = """(expected) => {
  try {
    const value = JSON.parse(document.querySelector('#thread-metadata-values').textContent);
    return JSON.stringify(Object.keys(value).sort().map((k) => [k, value[k]])) === expected;
  } catch { return false; }
}"""


def _expect_metadata(page: Page, expected: dict[str, str]) -> None:
    wanted = json.dumps(sorted(expected.items()), separators=(",", ":"))
    page.wait_for_function(SHOWN_METADATA, arg=wanted)


@pytest.mark.parametrize("size", SIZES)
def test_a_threads_metadata_is_edited_and_the_thread_copied(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    run = _run(mesh, "chat", input={"message": f"the heron at {size}", "model": "offline:echo"})
    _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED")
    thread_id = _thread_id(run)
    with _checked_page(browser, mesh, SIZES[size]) as page:
        _open_thread(page, thread_id)
        shown = page.locator("#thread-metadata-values")
        expect(shown).to_have_text("none")

        page.click("#thread-metadata-edit")
        expect(page.locator("#thread-metadata-form")).to_be_visible()
        page.fill("#thread-metadata-text", '{"team": "herons", "stage": "draft"}')
        page.click("#thread-metadata-save")
        expect(page.locator("#thread-metadata-form")).to_be_hidden()
        _expect_metadata(page, {"team": "herons", "stage": "draft"})
        # A key taken out of the object is removed; one changed is set; the others stay.
        page.click("#thread-metadata-edit")
        assert json.loads(page.input_value("#thread-metadata-text")) == {
            "team": "herons",
            "stage": "draft",
        }
        page.fill("#thread-metadata-text", '{"stage": "review", "owner": "ada"}')
        shot(page, artifacts, f"thread-metadata-edit-{size}")
        page.click("#thread-metadata-save")
        _expect_metadata(page, {"stage": "review", "owner": "ada"})
        thread = mesh.get(f"/v1/threads/{thread_id}")["thread"]
        assert thread["metadata"] == {"stage": "review", "owner": "ada"}, thread
        # Not a JSON object: said, nothing sent.
        page.click("#thread-metadata-edit")
        page.fill("#thread-metadata-text", "[1]")
        page.click("#thread-metadata-save")
        expect(page.locator("#thread-meta-error")).to_contain_text("must be a JSON object")
        page.click("#thread-metadata-cancel")
        expect(page.locator("#thread-metadata-form")).to_be_hidden()
        _fits(page, "the thread page with its metadata")

        page.click("#thread-copy")
        page.wait_for_url(re.compile(r".*#/threads/(?!" + thread_id + r")[0-9a-f-]{36}$"))
        copy_id = page.url.rsplit("/", 1)[-1]
        expect(page.locator("#thread-name")).to_have_text(f"threads/{copy_id}")
        expect(page.locator("#state-messages li")).to_have_count(2)
        expect(page.locator("#state-messages li").nth(0).locator(".text")).to_have_text(
            f"the heron at {size}"
        )
        _expect_metadata(page, {"stage": "review", "owner": "ada"})
        expect(page.locator("#thread-conversation")).to_contain_text("No runs in this thread yet.")
        shot(page, artifacts, f"thread-copied-{size}")
        _fits(page, "the copy's page")
    copy = mesh.get(f"/v1/threads/{copy_id}")["thread"]
    assert copy.get("runCount", 0) == 0 and copy["metadata"] == thread["metadata"], copy


@pytest.mark.parametrize("size", SIZES)
def test_an_ended_run_is_deleted_after_asking_and_a_paused_one_offers_no_delete(
    size: str, browser: Browser, mesh: Mesh, artifacts: Path
) -> None:
    paused = _run(mesh, "approval", input={"message": "a draft", "question": "Keep me?"})
    done = _run(mesh, "chat", input={"message": f"delete me at {size}", "model": "offline:echo"})
    _wait_run(mesh, done["name"], "RUN_STATUS_COMPLETED")
    # A later run on the thread: its state (which the deleted run wrote) is read with its graph.
    later = _run(
        mesh, "chat", thread=done["thread"], input={"message": "and then", "model": "offline:echo"}
    )
    _wait_run(mesh, paused["name"], "RUN_STATUS_PAUSED", timeout=120)
    _wait_run(mesh, later["name"], "RUN_STATUS_COMPLETED")
    with _checked_page(browser, mesh, SIZES[size]) as page:
        page.goto(f"/#/{paused['name']}")
        expect(page.locator("#run-status [data-status=RUN_STATUS_PAUSED]")).to_be_visible()
        expect(page.locator("#run-cancel")).to_be_enabled()
        expect(page.locator("#run-delete")).to_be_hidden()

        page.goto(f"/#/{done['name']}")
        expect(page.locator("#run-status [data-status=RUN_STATUS_COMPLETED]")).to_be_visible()
        expect(page.locator("#run-replay")).to_be_enabled()  # its events all read
        delete = page.locator("#run-delete")
        expect(delete).to_be_visible()
        delete.click()
        expect(page.locator("#run-delete-confirm")).to_be_visible()
        expect(page.locator("#run-delete-confirm")).to_contain_text("Delete this run?")
        shot(page, artifacts, f"run-delete-confirm-{size}")
        _fits(page, "the run page asking to delete")
        page.click("#run-delete-no")
        expect(page.locator("#run-delete-confirm")).to_be_hidden()
        assert _status(mesh, f"/v1/{done['name']}") == 200

        delete.click()
        page.click("#run-delete-yes")
        # To its thread, whose state the run wrote stays.
        page.wait_for_url(re.compile(f".*#/threads/{_thread_id(done)}$"))
        turns = page.locator("#thread-conversation li.turn.reply")
        expect(turns).to_have_count(1)
        expect(turns.nth(0)).to_have_attribute("data-run", str(later["name"]))
        expect(page.locator("#state-messages li").nth(0).locator(".text")).to_have_text(
            f"delete me at {size}"
        )
    assert _status(mesh, f"/v1/{done['name']}") == 404
    mesh.post(f"/v1/{paused['name']}:cancel", {})
