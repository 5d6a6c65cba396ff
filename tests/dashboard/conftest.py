"""Dashboard tests: a real `amelia up` (with an API token) and Debian's Chromium driven by
Playwright's sync API (plain `def` tests: the sync API cannot run inside the session's asyncio
loop). The browser is module-scoped, so it is gone before other suites' async tests run; the
mesh (a subprocess) is shared by the folder's modules, as starting one takes a while.

Screenshots go to test-artifacts/dashboard/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_helpers import REPO, Mesh
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
VIEWPORT = {"width": 1280, "height": 860}

# Generous waits: other test suites load this 2-core machine while the browser works.
expect.set_options(timeout=20_000)


@pytest.fixture(scope="package")
def mesh() -> Iterator[Mesh]:
    """One `amelia up` for the whole folder (starting one takes a while)."""
    # Not under pytest's numbered temp dirs: other pytest sessions on this machine prune those
    # while we run (the embedded PostgreSQL lost its data directory that way).
    root = Path(tempfile.mkdtemp(prefix="amelia-dashboard-"))
    root.chmod(0o755)  # the embedded PostgreSQL runs as its own user
    mesh = Mesh(root)
    mesh.start()
    try:
        yield mesh
    finally:
        mesh.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        message = "chromium is not installed: run `make browser`"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it (make test depends on make browser)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


class PageErrors(list[str]):
    """Uncaught exceptions in the page: any of them fails the test."""


@pytest.fixture
def context(browser: Browser, mesh: Mesh) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=VIEWPORT, base_url=mesh.url)  # type: ignore[arg-type]
    context.set_default_timeout(30_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext, mesh: Mesh) -> Iterator[Page]:
    """A fresh page that got the token from `?token=` (as the URL `amelia up` prints)."""
    page = context.new_page()
    errors = PageErrors()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"/?token={mesh.token}#/status")
    page.wait_for_selector("#connection[data-state=open]")
    yield page
    assert not errors, f"uncaught errors in the page: {errors}"
