"""The dashboard's pure JavaScript modules (filters, graph layout, run statuses) unit-tested
with Node's own test runner: tests/dashboard/js/*.test.mjs, no browser."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_dashboard_js_unit_tests() -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed (it also runs buf: `make install`)")
        pytest.skip("node is not installed")
    result = subprocess.run(
        [
            node,
            "--no-warnings",
            "--test",
            *sorted(str(p) for p in (HERE / "js").glob("*.test.mjs")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout
