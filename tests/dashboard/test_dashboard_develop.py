"""A `develop` run's change on the run page: the diff (per file, coloured lines, counts) in the
approval card, where Land answers the run's question; and on a finished run whose branch was
kept (or a cancelled one that left its branch), Land / Discard through the git API — a conflict shown as the service's message naming the
file, a discard or a landing followed by its `git.*` event appearing in the run's activity.

On the folder's shared mesh, with the scripted OpenAI-compatible model of
tests/workflows/test_develop.py (served from a thread here: these tests are sync), at 1280×800
and 390×844, with no console errors and no sideways scroll."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_helpers import Mesh
from dashboard_pages import expect_status, shot
from playwright.sync_api import Browser, Page, expect
from test_dashboard_features import DESKTOP, PHONE, _checked_page, _fits, _run, _wait_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflows"))
from test_develop import (
    GREETING_V1,
    ScriptedOpenAI,
    team,
    write_greeting,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedOpenAI]:
    """The scripted model, served by an event loop of its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ScriptedOpenAI()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def repository(mesh: Mesh) -> Path:
    """A repository on `main` (one commit) under the mesh's CODE_ALLOWED_ROOTS."""
    path = mesh.root / "code" / f"repo-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# a repository\n")
    commit(path, "initial")
    return path


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", message)


def develop(mesh: Mesh, scripted: ScriptedOpenAI, repo: Path) -> dict[str, Any]:
    """A develop run that wrote greet.py, paused on its final question."""
    model = scripted.model(team([write_greeting()], lambda _: "APPROVE"))
    run = _run(
        mesh,
        "develop",
        input={
            "message": "Add greet()",
            "repository": str(repo),
            "model": model,
            "developer": "agent",
        },
    )
    wait_question(mesh, run["name"], "approve_plan")
    mesh.post(f"/v1/{run['name']}:resume", {"answer": "approve"})
    return wait_question(mesh, run["name"], "approve_diff")


def wait_question(mesh: Mesh, name: str, node: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = mesh.get(f"/v1/{name}")["run"]
        if run["status"] == "RUN_STATUS_PAUSED" and run.get("interrupt", {}).get("node") == node:
            return run
        assert run["status"] not in ("RUN_STATUS_COMPLETED", "RUN_STATUS_FAILED"), run
        assert time.monotonic() < deadline, f"{name} never asked {node}: {run}"
        time.sleep(0.2)


def kept(mesh: Mesh, scripted: ScriptedOpenAI) -> tuple[Path, dict[str, Any]]:
    """A new repository, and a develop run on it that ended keeping its branch (greet.py)."""
    repo = repository(mesh)
    run = develop(mesh, scripted, repo)
    mesh.post(f"/v1/{run['name']}:resume", {"answer": "keep"})
    done = _wait_run(mesh, run["name"], "RUN_STATUS_COMPLETED", timeout=120)
    assert done["output"]["status"] == "kept", done
    return repo, done


def expect_greet_diff(page: Page, where: str) -> None:
    card = page.locator(where)
    expect(card.locator("#diff-stats")).to_contain_text("1 file")
    expect(card.locator("#diff-stats")).to_contain_text("+2")
    f = card.locator('.diff-file[data-path="greet.py"]')
    expect(f.locator(".diff-change")).to_have_text("added")
    expect(f.locator(".dl.add").first).to_have_text("+" + GREETING_V1.splitlines()[0] + "\n")
    expect(f.locator(".dl.hunk")).to_have_count(1)
    # No stray "null" printed between the parts.
    stray = "(card) => [...card.childNodes].filter((n) => n.nodeType === 3).map((n) => n.data)"
    assert card.evaluate(stray) == []


def open_run(page: Page, run: dict[str, Any]) -> None:
    page.goto(f"/#/runs/{run['name'].split('/')[-1]}")


def open_change(page: Page, run: dict[str, Any]) -> None:
    """The page of an ended run that left its branch, with greet.py in its change card."""
    open_run(page, run)
    expect_greet_diff(page, "#diff-slot #run-diff")
    # The page has replayed the run's events (its old approve_diff question among them) and the
    # card is still the ended run's: a click now acts on what the user sees.
    expect(activity(page, "run.completed")).to_have_count(1)
    expect_greet_diff(page, "#diff-slot #run-diff")


def activity(page: Page, event_type: str) -> Any:
    return page.locator(f'#run-activity li[data-type="{event_type}"]')


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_final_question_shows_the_diff_and_land_answers_it(
    size: str, browser: Browser, mesh: Mesh, scripted: ScriptedOpenAI, artifacts: Path
) -> None:
    repo = repository(mesh)
    run = develop(mesh, scripted, repo)
    with _checked_page(browser, mesh, DESKTOP if size == "desktop" else PHONE) as page:
        open_run(page, run)
        expect_greet_diff(page, ".interrupt #run-diff")
        expect(page.locator("#diff-into")).to_have_value("main")
        # The diff replaces the question's raw JSON; Land / Discard / Keep answer it.
        expect(page.locator('.question-detail[data-key="diff"]')).to_have_count(0)
        _fits(page, "the approval card")
        shot(page, artifacts, f"develop-question-{size}")
        page.click("#diff-land")
        expect_status(page, "RUN_STATUS_COMPLETED")
        expect(activity(page, "git.landed")).to_have_count(1)
        # Landed: the branch is gone, so is the change card.
        expect(page.locator("#run-diff")).to_be_hidden()
        _fits(page, "the landed run")
    assert git(repo, "show", "main:greet.py") + "\n" == GREETING_V1


def test_a_kept_branch_lands_from_the_run_page_and_git_landed_appears(
    browser: Browser, mesh: Mesh, scripted: ScriptedOpenAI, artifacts: Path
) -> None:
    repo, run = kept(mesh, scripted)
    with _checked_page(browser, mesh, DESKTOP) as page:
        open_change(page, run)
        expect(page.locator("#diff-keep")).to_have_count(0)
        expect(activity(page, "run.completed")).to_have_count(1)
        expect(activity(page, "git.landed")).to_have_count(0)
        shot(page, artifacts, "develop-kept-desktop")
        page.click("#diff-land")
        expect(page.locator("#diff-notice .notice.ok")).to_contain_text("Landed in main")
        # The event GitService published after the run's end shows up, once.
        expect(activity(page, "git.landed")).to_have_count(1)
        expect(page.locator("#diff-land")).to_be_disabled()
        page.locator("#diff-notice").scroll_into_view_if_needed()
        shot(page, artifacts, "develop-landed-desktop")
    assert git(repo, "show", "main:greet.py") + "\n" == GREETING_V1


def test_a_conflict_names_the_file_then_discard_removes_the_branch(
    browser: Browser, mesh: Mesh, scripted: ScriptedOpenAI, artifacts: Path
) -> None:
    repo, run = kept(mesh, scripted)
    # main gets its own greet.py meanwhile: the run's branch conflicts with it.
    (repo / "greet.py").write_text("def greet(name):\n    return 'hi ' + name\n")
    commit(repo, "mine")
    before = git(repo, "rev-parse", "main")
    branch = run["output"]["branch"]
    with _checked_page(browser, mesh, PHONE) as page:
        open_change(page, run)
        page.click("#diff-land")
        error = page.locator("#diff-notice .notice.error")
        expect(error).to_contain_text("conflict")
        expect(error).to_contain_text("greet.py")
        expect(page.locator("#diff-land")).to_be_enabled()
        _fits(page, "the conflict")
        error.scroll_into_view_if_needed()
        shot(page, artifacts, "develop-conflict-phone")
        page.click("#diff-discard")
        expect(page.locator("#diff-notice .notice.ok")).to_contain_text(f"Discarded {branch}")
        expect(activity(page, "git.discarded")).to_have_count(1)
        _fits(page, "the discarded run")
        page.locator("#diff-notice").scroll_into_view_if_needed()
        shot(page, artifacts, "develop-discarded-phone")
    assert git(repo, "rev-parse", "main") == before
    assert not git(repo, "branch", "--list", branch)


def test_a_cancelled_run_that_left_its_branch_can_be_discarded(
    browser: Browser, mesh: Mesh, scripted: ScriptedOpenAI, artifacts: Path
) -> None:
    """No output names the branch of a cancelled run: the page finds it through the git API."""
    repo = repository(mesh)
    run = develop(mesh, scripted, repo)
    mesh.post(f"/v1/{run['name']}:cancel", {})
    _wait_run(mesh, run["name"], "RUN_STATUS_CANCELLED", timeout=120)
    branch = f"amelia/{run['name'].split('/')[-1]}"
    assert git(repo, "branch", "--list", branch)
    before = git(repo, "rev-parse", "main")
    with _checked_page(browser, mesh, PHONE) as page:
        open_run(page, run)
        expect_status(page, "RUN_STATUS_CANCELLED")
        expect_greet_diff(page, "#diff-slot #run-diff")
        expect(page.locator("#diff-keep")).to_have_count(0)
        _fits(page, "the cancelled run's change")
        page.click("#diff-discard")
        expect(page.locator("#diff-notice .notice.ok")).to_contain_text(f"Discarded {branch}")
        expect(page.locator("#diff-discard")).to_be_disabled()
        shot(page, artifacts, "develop-cancelled-discarded-phone")
    assert not git(repo, "branch", "--list", branch)
    assert git(repo, "rev-parse", "main") == before


def test_a_run_cancelled_before_its_branch_shows_no_change(
    browser: Browser, mesh: Mesh, scripted: ScriptedOpenAI
) -> None:
    repo = repository(mesh)
    model = scripted.model(team([write_greeting()], lambda _: "APPROVE"))
    run = _run(
        mesh,
        "develop",
        input={"message": "Add greet()", "repository": str(repo), "model": model},
    )
    wait_question(mesh, run["name"], "approve_plan")
    mesh.post(f"/v1/{run['name']}:cancel", {})
    _wait_run(mesh, run["name"], "RUN_STATUS_CANCELLED", timeout=120)
    with _checked_page(browser, mesh, DESKTOP) as page:
        open_run(page, run)
        expect_status(page, "RUN_STATUS_CANCELLED")
        # The git API was asked and named no branch of this run: no card, no 404 logged.
        page.wait_for_function(
            "() => performance.getEntriesByType('resource')"
            ".some((e) => e.name.includes('/v1/repositories'))"
        )
        expect(page.locator("#run-diff")).to_be_hidden()
