"""QA s26 H2: a run's token total counts every model call, also those of an attempt interrupted
in the middle of a node (the node ran again), so it is bigger than its steps' — the run view
now says by how much: "of which … in interrupted attempts" beside the total, and "not in these
steps: …" under the steps. Made for real: the agents service is stopped (SIGTERM) while the
run's second node holds after its model call; `amelia up` starts it again and the run goes on
from its checkpoint, running that node again. Looked at on a desktop and a phone."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
from dashboard_helpers import Mesh
from dashboard_pages import open_signed_in, shot
from playwright.sync_api import Browser, expect
from test_dashboard_outage import _run, _unit_pid, _wait_serving, _wait_status

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture(scope="module")
def interrupted(mesh: Mesh) -> dict[str, object]:
    """The run (GetRun's JSON) once COMPLETED, its `second` node's first attempt interrupted."""
    with tempfile.TemporaryDirectory(prefix="amelia-interrupted-") as directory:
        called, release = Path(directory) / "called", Path(directory) / "release"
        run = _run(mesh, "calls", input={"called": str(called), "release": str(release)})
        deadline = time.monotonic() + 60
        while not called.exists():
            assert time.monotonic() < deadline, "the second node never made its call"
            time.sleep(0.1)
        old = _unit_pid(mesh, "agents")
        assert old is not None, "the agents service is not running"
        try:
            os.kill(old, signal.SIGTERM)  # its worker stops the run where it is
            _wait_serving(mesh, old)
        finally:
            release.touch()
        _wait_status(mesh, run["name"], "RUN_STATUS_COMPLETED", timeout=120)
        done: dict[str, object] = mesh.get(f"/v1/{run['name']}")["run"]
        return done


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_run_view_says_how_much_of_the_total_interrupted_attempts_used(
    browser: Browser, mesh: Mesh, artifacts: Path, interrupted: dict[str, object], size: str
) -> None:
    usage = interrupted["usage"]
    assert isinstance(usage, dict)
    total = (int(usage["inputTokens"]), int(usage["outputTokens"]))
    lost = (int(usage["interruptedInputTokens"]), int(usage["interruptedOutputTokens"]))
    # The second node's call (5 words out), made twice; the first node's once (3 words).
    assert lost[1] == 5 and total[1] == 3 + 5 + 5, usage
    context, page, problems = open_signed_in(browser, mesh, DESKTOP if size == "desktop" else PHONE)
    try:
        page.goto(f"/#/{interrupted['name']}")
        meta = page.locator("#run-meta")
        expect(meta).to_contain_text(
            f"Model tokens {total[0]} in / {total[1]} out, of which {lost[0]} in / {lost[1]} out"
            " in interrupted attempts"
        )
        steps = page.locator("#steps-totals")
        # The steps count the rest: the total less what the interrupted attempt used.
        expect(steps).to_contain_text(
            f" · {total[0] - lost[0]} tokens in, {total[1] - lost[1]} out"
        )
        expect(steps).to_contain_text(
            f" · not in these steps: {lost[0]} in / {lost[1]} out in interrupted attempts"
        )
        shot(page, artifacts, f"interrupted-usage-{size}")
        page.locator("#steps-card").scroll_into_view_if_needed()
        shot(page, artifacts, f"interrupted-usage-{size}-steps")
        assert page.evaluate(NO_SIDEWAYS_SCROLL)
    finally:
        context.close()
    assert not problems, problems
